"""The synthetic source (pretrain/data/sources/synthetic.py) through prepare: reproducible shards, manifest labels,
held-out disjointness, the stage grammar, image sizes, and the project's loader and tokenizer reading it."""
import hashlib
import io
import json
import re

import pytest
from PIL import Image

from pretrain.data import prepare
from pretrain.data.manifest import count_samples, load_shards
from pretrain.data.pipeline import TrainLoader, read_shard
from pretrain.data.sources import synthetic
from pretrain.data.tokenizer import Tokenizer, train_tokenizer

from .test_prepare import members

N, SHARD = 200, 80
RELATION = re.compile(r"\b(left of|right of|above|below)\b")
COUNT = re.compile(r"\b(two|three|four)\b")
FILL = re.compile(r"\b(striped|outlined)\b")
SIZE = re.compile(r"\b(small|large)\b")
POSITION = re.compile(r"\b(on the left|on the right|at the top|at the bottom|in the centre)\b")


def write(out, *args: str):
    return prepare.main(["synthetic", "--out", str(out), "--shard-size", str(SHARD), *args])


def digests(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("shard-*.tar"))}


@pytest.fixture(scope="module")
def stage3(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "stage3"
    write(out, "--split", "train", "--stage", "3", "--limit", str(N))
    return out


def test_shards_are_byte_identical_across_writes(stage3, tmp_path):
    write(tmp_path / "again", "--split", "train", "--stage", "3", "--limit", str(N))
    assert digests(tmp_path / "again") == digests(stage3) and len(digests(stage3)) == 3
    write(tmp_path / "seed1", "--split", "train", "--stage", "3", "--limit", str(N), "--seed", "1")
    assert not set(digests(tmp_path / "seed1").values()) & set(digests(stage3).values())


def test_manifest_labels(stage3):
    manifest = json.loads((stage3 / "manifest.json").read_text())
    assert manifest["source"] == "synthetic" and manifest["synthetic"] is True and manifest["split"] == "train"
    assert (manifest["stage"], manifest["seed"], manifest["grammar_version"], manifest["image_size"]) == (3, 0, 1, 32)
    assert manifest["samples"] == N and [s["samples"] for s in manifest["shards"]] == [80, 80, 40]
    assert "heldout" in manifest["split_rule"] and manifest["skipped"] == {}
    sample = next(iter(members(stage3 / "shard-000000.tar").values()))
    meta = json.loads(sample["json"])
    assert meta["synthetic"] is True and meta["stage"] == 3 and meta["split"] == "train" and meta["objects"]


def test_loader_reads_every_counted_sample(stage3):
    assert count_samples(str(stage3)) == N
    shards = load_shards(str(stage3))
    read = [s for shard in shards for s in read_shard(shard)]
    assert len(read) == N and all(set(s) >= {"png", "txt", "json"} for s in read)
    captions = [s["txt"].decode() for s in read]
    assert captions == list(synthetic.captions("train", 3, 0, N))  # the tokenizer helper gives the same text

    # a tokenizer trained the project's way on the captions knows every word of held-out captions too
    texts = [c for stage in synthetic.STAGES for c in synthetic.captions("train", stage, 0, 300)]
    model = train_tokenizer(texts + [" ".join(synthetic.vocabulary())], stage3.parent / "tok", 160)
    tokenizer = Tokenizer(model, context_length=24)
    for caption in synthetic.captions("heldout", 3, 0, 100):
        assert 1 not in tokenizer.encode(caption), caption  # our id 1 = SentencePiece's unk
    images, tokens = next(iter(TrainLoader(shards, tokenizer, 32, 8, 0, 1, workers=0, shuffle_buffer=20)))
    assert images.shape == (8, 3, 32, 32) and tokens.shape == (8, 24)


@pytest.mark.parametrize("size", [28, 64])
def test_images_decode_at_the_stated_size(stage3, tmp_path, size):
    write(tmp_path / "out", "--split", "heldout", "--stage", "2", "--limit", "5", "--image-size", str(size))
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["image_size"] == size
    for directory, side in ((tmp_path / "out", size), (stage3, 32)):
        for sample in members(directory / "shard-000000.tar").values():
            image = Image.open(io.BytesIO(sample["png"]))
            assert image.size == (side, side) and image.mode == "RGB"


@pytest.mark.parametrize("stage", synthetic.STAGES)
def test_heldout_never_overlaps_train(stage):
    n = 3000
    train = [synthetic.compose("train", stage, 0, i)[:2] for i in range(n)]
    heldout = [synthetic.compose("heldout", stage, seed, i)[:2] for seed in (0, 1) for i in range(n // 2)]
    assert {synthetic.split_of(s) for s, _ in train} == {"train"}
    assert {synthetic.split_of(s) for s, _ in heldout} == {"heldout"}
    assert not {synthetic.canonical(s) for s, _ in train} & {synthetic.canonical(s) for s, _ in heldout}
    assert not {c for _, c in train} & {c for _, c in heldout}
    assert len({synthetic.canonical(s) for s, _ in heldout}) >= 5  # not one repeated scene
    if stage == 3:  # and no (caption, image) pair, drawn, is shared either
        def pairs(split, count):
            return {(s.caption, hashlib.sha256(s.image.tobytes()).hexdigest())
                    for s in (synthetic.make_sample(split, 3, 0, i) for i in range(count))}
        assert not pairs("train", 1000) & pairs("heldout", 1000)


def test_stage_grammar():
    vocabulary = set(synthetic.vocabulary())
    by_stage = {stage: list(synthetic.captions("train", stage, 0, 500)) for stage in synthetic.STAGES}
    for stage, captions in by_stage.items():
        assert all(set(c.split()) <= vocabulary and c == c.lower() for c in captions), stage
        assert len(set(captions)) > 100
    for pattern, first in ((RELATION, 3), (COUNT, 3), (FILL, 3), (SIZE, 2), (POSITION, 2)):
        for stage, captions in by_stage.items():
            hits = sum(bool(pattern.search(c)) for c in captions)
            assert (hits > 25) if stage >= first else hits == 0, (pattern.pattern, stage, hits)


@pytest.mark.parametrize("args, flag", [
    (["--stage", "4"], "--stage"), (["--stage", "1", "--image-size", "30"], "--image-size"),
    (["--stage", "1", "--split", "test"], "--split"), ([], "--stage"),
])
def test_bad_arguments_name_the_flag(tmp_path, capsys, args, flag):
    with pytest.raises(SystemExit) as exit_:
        write(tmp_path / "bad", *args)
    assert exit_.value.code == 2
    assert flag in capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(SystemExit):
        prepare.main(["fashion_mnist", "--out", str(tmp_path / "f"), "--stage", "1"])
    assert "--stage is only for the synthetic source" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
