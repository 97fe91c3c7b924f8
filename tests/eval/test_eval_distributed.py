"""Evaluation spread over ranks (gloo, 2 processes) gives exactly the single-rank numbers: the CLI under
torchrun, and the in-training hook on a ZeRO-3 and on a tensor-parallel DeepSpeed engine, after which training
goes on (also when only one rank has a task's data)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eval import intrain
from eval.__main__ import main
from pretrain.data.manifest import write_manifest
from pretrain.data.sources import openclipart
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run(cmd):
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_cli_on_two_ranks_equals_one_rank(trained, retrieval_set, tmp_path):
    args = ["--checkpoint", str(trained), "--tasks", f"fashion_mnist,retrieval:{retrieval_set['jsonl']}",
            "--limit", "300", "--batch-size", "64"]
    assert main([*args, "--out", str(tmp_path / "one.json")]) == 0
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         "-m", "eval", *args, "--out", str(tmp_path / "two.json")])
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert [r["metrics"] for r in one] == [r["metrics"] for r in two]
    assert [r["dataset"] for r in one] == ["fashion_mnist", f"retrieval:{retrieval_set['jsonl']}"]
    for r in one:  # CLIP_benchmark's fields, plus ours
        assert {"dataset", "model", "pretrained", "task", "metrics", "language", "architecture", "step"} <= r.keys()
        assert r["step"] == 80 and r["architecture"]["vision"]["width"] == 64 and r["samples"] == 300
    assert one[1]["metrics"].keys() == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}


def test_intrain_on_zero3_and_tensor_parallel_engines_matches_single_process(trained, loaded, retrieval_set, tmp_path):
    tasks, limit = ["fashion_mnist", f"retrieval:{retrieval_set['jsonl']}", "openclipart_retrieval"], 200
    held_out = tmp_path / "data0" / "shards" / "openclipart_heldout"  # only rank 0 has it: all ranks skip it
    shutil.copytree(Path(retrieval_set["shards"]).parent, held_out, ignore=shutil.ignore_patterns("img", "*.jsonl"))
    write_manifest(held_out, {"source": "openclipart", "split": "heldout", "split_rule": openclipart.SPLIT_RULE,
                              "shards": [{"path": "pairs.tar"}]})
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         "tests/eval/intrain_worker.py", "--checkpoint", str(trained), "--tasks", ",".join(tasks),
         "--limit", str(limit), "--out", str(tmp_path / "intrain"),
         "--data-dirs", f"{tmp_path / 'data0'},{tmp_path / 'data1'}"])
    expected = intrain.run(loaded.model, loaded.tokenizer, loaded.transform, tasks, limit, batch_size=64,
                           data_dir=tmp_path / "data1")
    assert set(expected) == {"fashion_mnist/acc1", "fashion_mnist/acc5", "fashion_mnist/mean_per_class_recall"} | {
        f"retrieval:{retrieval_set['jsonl']}/{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
    assert json.loads((tmp_path / "intrain.rank0").read_text()) == {"zero3": expected, "tp2": expected}
    assert json.loads((tmp_path / "intrain.rank1").read_text()) == {"zero3": {}, "tp2": {}}
