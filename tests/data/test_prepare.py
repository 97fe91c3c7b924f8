import gzip
import io
import json
import pickle
import tarfile
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from pretrain.data import prepare
from pretrain.data.sources import fashion_mnist, mnist, openclipart

from .helpers import png_bytes


def members(shard) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(shard) as tar:
        for m in tar:
            key, ext = m.name.split(".", 1)
            samples[key][ext] = tar.extractfile(m).read()
    return samples


@pytest.fixture(scope="module")
def fmnist_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fmnist")
    prepare.main(["fashion_mnist", "--out", str(out), "--limit", "300", "--shard-size", "120"])
    return out


def test_fashion_mnist_shards_and_manifest(fmnist_dir):
    manifest = json.loads((fmnist_dir / "manifest.json").read_text())
    assert manifest["source"] == "fashion_mnist" and manifest["split"] == "train"
    assert [s["samples"] for s in manifest["shards"]] == [120, 120, 60] and manifest["samples"] == 300
    assert [s["path"] for s in manifest["shards"]] == [f"shard-{i:06d}.tar" for i in range(3)]
    assert manifest["skipped"] == {} and manifest["created_by"].startswith("python -m pretrain.data.prepare")
    assert sorted(p.name for p in fmnist_dir.iterdir()) == ["manifest.json"] + [f"shard-{i:06d}.tar" for i in range(3)]

    images, labels = fashion_mnist.load_split("train")
    captions, counts = defaultdict(set), Counter()
    for i, (_, sample) in enumerate(sorted(members(fmnist_dir / "shard-000000.tar").items())):
        assert set(sample) == {"png", "txt", "json"}
        image = Image.open(io.BytesIO(sample["png"]))
        assert image.size == (28, 28) and np.array_equal(np.asarray(image), images[i])
        meta = json.loads(sample["json"])
        assert meta["label"] == labels[i] and meta["source"] == "fashion_mnist"
        captions[meta["label"]].add(sample["txt"].decode())
        counts[meta["label"]] += 1
    for label, texts in captions.items():  # ~12 samples per class: nearly all captions differ
        assert len(texts) >= 0.8 * counts[label], (label, texts)


def test_prepare_is_reproducible_and_replaces_stale_shards(fmnist_dir, tmp_path):
    out = tmp_path / "again"
    prepare.main(["fashion_mnist", "--out", str(out), "--limit", "300", "--shard-size", "120"])
    assert (out / "shard-000001.tar").read_bytes() == (fmnist_dir / "shard-000001.tar").read_bytes()
    prepare.main(["fashion_mnist", "--out", str(out), "--limit", "100", "--shard-size", "120", "--seed", "1"])
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-000000.tar"]
    assert (out / "shard-000000.tar").read_bytes() != (fmnist_dir / "shard-000000.tar").read_bytes()


def test_fashion_mnist_test_split_and_classnames():
    images, labels = fashion_mnist.load_split("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))
    assert len(fashion_mnist.CLASSNAMES) == 10 and len(fashion_mnist.SYNONYMS) == 10
    assert len(fashion_mnist.TEMPLATES) >= 40 and len(mnist.TEMPLATES) >= 40


def test_mnist_source(tmp_path):
    rng = np.random.default_rng(0)
    splits = [(rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)) for n in (5, 3, 40)]
    (tmp_path / "mnist").mkdir()
    with gzip.open(tmp_path / "mnist" / "mnist.pkl.gz", "wb") as f:
        pickle.dump(tuple(splits), f)
    prepare.main(["mnist", "--split", "test", "--raw", str(tmp_path), "--out", str(tmp_path / "out")])
    samples = [s for _, s in sorted(members(tmp_path / "out" / "shard-000000.tar").items())]
    images, labels = splits[2]
    assert [json.loads(s["json"])["label"] for s in samples] == labels.tolist()
    first = np.asarray(Image.open(io.BytesIO(samples[0]["png"])))
    assert np.array_equal(first, np.rint(images[0] * 255).astype(np.uint8).reshape(28, 28))
    assert len({s["txt"] for s in samples}) >= 30


SVG = """<svg xmlns="http://www.w3.org/2000/svg"><metadata><rdf:RDF
 xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:cc="http://web.resource.org/cc/"
 xmlns:dc="http://purl.org/dc/elements/1.1/"><cc:Work rdf:about=""><dc:title>{title}</dc:title>
 <dc:subject><rdf:Bag>{keywords}</rdf:Bag></dc:subject><dc:creator><cc:Agent><dc:title>Someone</dc:title>
 </cc:Agent></dc:creator></cc:Work></rdf:RDF></metadata><rect/></svg>"""


def test_openclipart_captions_skips_and_split(tmp_path):
    root = tmp_path / "openclipart/usr/share/openclipart"
    items = {"food/red_apple": ("Red Apple", ["hash", "food", "fruit", "red_apple", "Food", "fresh_produce"]),
             "misc/nothing": ("", []), "misc/big": ("Huge", ["poster"])}
    for rel, (title, keywords) in items.items():
        for kind in ("png", "svg"):
            (root / kind / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "png" / f"{rel}.png").write_bytes(png_bytes(1))
        li = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
        (root / "svg" / f"{rel}.svg").write_text(SVG.format(title=title, keywords=li))
    (root / "png" / "misc" / "orphan.png").write_bytes(png_bytes(2))
    Image.new("L", (300, 200)).save(root / "png" / "misc" / "big.png")

    prepare.main(["openclipart", "--split", "all", "--raw", str(tmp_path), "--out", str(tmp_path / "out"),
                  "--max-pixels", "50000"])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["samples"] == 1 and "heldout" in manifest["split_rule"]
    assert manifest["skipped"] == {"no_caption": 1, "missing_svg": 1, "too_large": 1}
    (sample,) = members(tmp_path / "out" / "shard-000000.tar").values()
    assert sample["txt"].decode() == "Red Apple, food, fruit, fresh produce"

    splits = Counter(openclipart.split_of(f"openclipart_{i}") for i in range(20000))
    assert 0.04 < splits["heldout"] / 20000 < 0.06
    assert openclipart.split_of("openclipart_food_red_apple") == openclipart.split_of("openclipart_food_red_apple")


def test_folder_source_keeps_jpeg_and_reencodes_others(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (20, 10), "red").save(src / "a.jpg")
    Image.new("RGB", (10, 10), "blue").save(src / "b.bmp")
    (src / "c.png").write_bytes(png_bytes(3))
    (src / "a.txt").write_text("a red rectangle")
    (src / "b.txt").write_text("a blue square")
    (src / "list.csv").write_text("image,caption\na.jpg,red\nmissing.png,gone\nb.bmp,blue\n")

    prepare.main(["folder", "--input", str(src), "--out", str(tmp_path / "dir")])
    manifest = json.loads((tmp_path / "dir" / "manifest.json").read_text())
    assert manifest["samples"] == 2 and manifest["skipped"] == {"no_caption": 1}
    samples = members(tmp_path / "dir" / "shard-000000.tar")
    assert [sorted(s) for s in samples.values()] == [["jpg", "json", "txt"], ["json", "png", "txt"]]
    assert Image.open(io.BytesIO(samples["00000001_b"]["png"])).size == (10, 10)

    prepare.main(["folder", "--input", str(src / "list.csv"), "--out", str(tmp_path / "csv")])
    manifest = json.loads((tmp_path / "csv" / "manifest.json").read_text())
    assert manifest["samples"] == 2 and manifest["skipped"] == {"missing_image": 1}

    (src / "list.jsonl").write_text('{"image": "c.png", "text": "noise"}\n\n{"path": "a.jpg", "caption": "red"}\n')
    prepare.main(["folder", "--input", str(src / "list.jsonl"), "--out", str(tmp_path / "jsonl")])
    samples = members(tmp_path / "jsonl" / "shard-000000.tar")
    assert [s["txt"] for s in samples.values()] == [b"noise", b"red"]
