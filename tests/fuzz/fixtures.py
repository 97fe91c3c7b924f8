"""The fuzzer's real inputs, made once and cached under WORK/fixtures: Fashion-MNIST shards (3 x 40 pairs), a
512-id tokenizer and one real checkpoint (a 2-step, 2-rank DeepSpeed run of the tiny model, ZeRO-2). Cases copy
them into their own folder and mutate the copy; these are never changed."""
from __future__ import annotations

import shutil
from pathlib import Path

READY = ".ready"


def _build(folder: Path, make) -> Path:
    """Make `folder` once: into a temporary sibling, renamed when complete (an interrupted build is redone)."""
    if (folder / READY).is_file():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    make(tmp)
    (tmp / READY).write_text("")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def tiny_data(work: Path) -> dict:
    """{"shards": folder with manifest.json, "tokenizer": .model}: 120 pairs in 3 shards, 512 ids."""
    def make(root: Path) -> None:
        from pretrain.data.prepare import main as prepare
        from pretrain.data.tokenizer import main as train_tokenizer
        prepare(["fashion_mnist", "--split", "train", "--out", str(root / "shards"), "--shard-size", "40",
                 "--limit", "120"])
        train_tokenizer(["--shards", str(root / "shards"), "--wordnet", "/usr/share/wordnet", "--vocab", "512",
                         "--max-sentences", "5000", "--out", str(root / "tok")])
    root = _build(Path(work) / "fixtures" / "data", make)
    return {"shards": str(root / "shards"), "tokenizer": str(root / "tok" / "tokenizer.model")}


def checkpoint(work: Path) -> Path:
    """The run folder of a 2-step run (ZeRO-2, 2 CPU ranks, a save at the end): OUT/checkpoints/latest ->
    step00000002. One real DeepSpeed launch (about 30-60 s on 2 cores)."""
    data = tiny_data(work)

    def make(root: Path) -> None:
        from tests.conftest import launch
        launch(root / "run", data, "train.steps=2", "train.micro_batch=8", "data.shuffle_buffer=20")
    return _build(Path(work) / "fixtures" / "checkpoint", make) / "run"
