"""Real multi-rank DeepSpeed runs on the CPU (gloo): exact resume, universal conversion, ZeRO 1-3."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain import checkpoint as ckpt
from tests.conftest import launch, metrics
from tests.data.helpers import ShardServer

pytestmark = pytest.mark.slow
N = 3


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """One 2N-step run with batch fingerprints, and an N-step run of the same config without them (fp32, ZeRO-2,
    2 ranks, 1 loader worker each)."""
    base = tmp_path_factory.mktemp("runs")
    launch(base / "full", tiny_data, f"train.steps={2 * N}", "train.fingerprints=true", "data.workers=1")
    launch(base / "half", tiny_data, f"train.steps={2 * N}", f"train.stop_after={N}", "data.workers=1")
    return base


def test_exact_resume_matches_uninterrupted_run(runs, tiny_data):
    launch(runs / "resumed", tiny_data, f"train.steps={2 * N}", "train.fingerprints=true", "data.workers=1",
           resume=str(runs / "half"))
    full, resumed = metrics(runs / "full"), metrics(runs / "resumed")
    assert sorted(resumed) == list(range(N + 1, 2 * N + 1))
    for step in resumed:
        assert resumed[step]["batches"] == full[step]["batches"], f"data order differs at step {step}"
        assert abs(resumed[step]["loss"] - full[step]["loss"]) <= 1e-6, step
    # the EMA travels too: its update count (warm-up) and weights
    ema_full, ema_resumed = (ckpt.read_client_state(r / "checkpoints" / f"step{2 * N:08d}")["ema"]
                             for r in (runs / "full", runs / "resumed"))
    assert ema_full["t"] == ema_resumed["t"] == 2 * N
    assert all(torch.allclose(ema_full["shadow"][k], ema_resumed["shadow"][k], rtol=0, atol=1e-6)
               for k in ema_full["shadow"])


def test_http_shards_resume_exactly_in_a_two_rank_launch(runs, tiny_data, tmp_path):
    """The same run reading its shards over http:// (a local server thread, `data.shards` a brace URL), stopped at
    step N and resumed in a new launch: the batches and losses of the local uninterrupted run, and its weights."""
    server = ShardServer(Path(tiny_data["shards"]))
    try:
        names = sorted(p.name for p in Path(tiny_data["shards"]).glob("shard-*.tar"))
        remote = {**tiny_data, "shards": f"{server.base}/shard-{{{names[0][6:12]}..{names[-1][6:12]}}}.tar"}
        common = (f"train.steps={2 * N}", "train.fingerprints=true", "data.workers=1")
        launch(tmp_path, remote, *common, f"train.stop_after={N}")
        launch(tmp_path, remote, *common, resume="latest")
    finally:
        server.server.shutdown()
        server.server.server_close()
    assert all(server.requests.get(name) for name in names)  # every shard was read over http
    full, got = metrics(runs / "full"), metrics(tmp_path)
    assert sorted(got) == list(range(1, 2 * N + 1))
    for step in got:
        assert got[step]["batches"] == full[step]["batches"], f"data order differs at step {step}"
        assert abs(got[step]["loss"] - full[step]["loss"]) <= 1e-6, step
    a = ckpt.full_state_dict(tmp_path / "checkpoints" / f"step{2 * N:08d}")
    b = ckpt.full_state_dict(runs / "full" / "checkpoints" / f"step{2 * N:08d}")
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


def test_fingerprints_off_changes_nothing(runs):
    """The first N steps of the run without fingerprints ("half") are those of the run with them, bit for bit; the
    fingerprints are only logged when asked for."""
    full, half = metrics(runs / "full"), metrics(runs / "half")
    for s in range(1, N + 1):
        assert (half[s]["loss"], half[s]["grad_norm"], half[s]["lr"]) == (full[s]["loss"], full[s]["grad_norm"],
                                                                          full[s]["lr"]), s
        assert "batches" not in half[s] and len(full[s]["batches"]) == 2


def test_universal_checkpoint_resume(runs, tiny_data):
    base, tag = ckpt.resolve(runs / "half")
    universal = runs / "universal" / tag
    subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                    str(base / tag), "--output_folder", str(universal)], check=True, capture_output=True)
    assert ckpt.is_universal(universal)
    launch(runs / "from_universal", tiny_data, f"train.steps={N + 1}", "data.workers=1", resume=str(universal))
    assert abs(metrics(runs / "from_universal")[N + 1]["loss"] - metrics(runs / "full")[N + 1]["loss"]) <= 1e-6
    # the universal fp32 weights are the DeepSpeed checkpoint's weights
    a, b = ckpt.full_state_dict(universal), ckpt.full_state_dict(base / tag)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_trains(tiny_data, tmp_path, stage):
    """It learns at every ZeRO stage, and the EMA that each rank keeps of its own weights (under ZeRO-3 of its
    partitions) is saved whole: with ema_decay=0 it is the final weights exactly."""
    launch(tmp_path, tiny_data, "train.steps=8", "train.lr=0.002", "train.warmup=1", "train.ema_decay=0.0",
           ds_config=f"ds_configs/zero{stage}.json")
    m = metrics(tmp_path)
    first, last = (m[1]["loss"] + m[2]["loss"]) / 2, (m[7]["loss"] + m[8]["loss"]) / 2
    assert last < first - 0.05, (stage, first, last)
    assert (tmp_path / "checkpoints" / "latest").is_file()
    tag = tmp_path / "checkpoints" / "step00000008"
    states = tag / (ckpt.MODEL_STATES if stage < 3 else "zero_pp_rank_0_" + ckpt.MODEL_STATES)  # ZeRO-3's name
    ema = torch.load(states, map_location="cpu", weights_only=True)[ckpt.CLIENT_KEY]["ema"]
    weights = ckpt.full_state_dict(tag)
    assert ema["t"] == 8 and ema["shadow"].keys() == weights.keys()
    for k, w in weights.items():
        assert ema["shadow"][k].shape == w.shape and torch.equal(ema["shadow"][k], w.float()), (stage, k)


def test_bad_config_stops_before_training(tiny_data, tmp_path):
    proc = launch(tmp_path, tiny_data, "train.steps=2", "model.vision.heads=3", check=False)
    assert proc.returncode != 0
    assert "vision.width=64 is not divisible by vision.heads=3" in proc.stderr + proc.stdout
    assert not (tmp_path / "metrics.jsonl").exists()


def test_bad_samples_are_skipped_counted_and_training_goes_on(tiny_data, tmp_path):
    """A shard with a corrupt member, a truncated PNG, a 20000x20000 PNG header and an empty caption: training
    runs, and the skip counter after the first global batch (which ends the shard's only epoch) is 4."""
    from tests.data.helpers import good_sample, png_bytes, png_header_only, write_tar
    bad = [{"__key__": "bad0", "png": b"not a png at all", "txt": b"picture number 1"},
           {"__key__": "bad1", "png": png_bytes(1)[:40], "txt": b"picture number 2"},
           {"__key__": "bad2", "png": png_header_only(20000, 20000), "txt": b"picture number 3"},
           {"__key__": "bad3", "png": png_bytes(3), "txt": b"   "}]
    samples = [good_sample(i) for i in range(30)] + bad + [good_sample(30), good_sample(31)]
    shard = write_tar(tmp_path / "bad.tar", samples)
    launch(tmp_path / "run", {**tiny_data, "shards": shard}, "train.steps=1", "data.order=global",
           "data.workers=0", "data.shuffle_buffer=1")
    assert metrics(tmp_path / "run")[1]["skipped"] == {"bad_image": 2, "too_large": 1, "empty_caption": 1}


def test_in_training_eval_runs_on_every_rank_and_logs(tiny_data, tmp_path):
    import json
    launch(tmp_path, tiny_data, "train.steps=2", "train.eval_every=2", "train.eval_limit=50")
    rows = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2]
    assert any(k.startswith("fashion_mnist") and 0.0 <= v <= 1.0 for k, v in rows[0].items() if k != "step"), rows


def test_bad_eval_task_stops_before_training(tiny_data, tmp_path):
    proc = launch(tmp_path, tiny_data, "train.steps=2", "train.eval_every=2", "train.eval_tasks=no_such_task",
                  check=False)
    assert proc.returncode != 0 and "train.eval_tasks" in proc.stderr + proc.stdout
    assert not (tmp_path / "metrics.jsonl").exists()
