"""Layouts (tp, pp, dp) against one process: the same losses and weights, and universal checkpoints that
reshard between layouts. Real DeepSpeed + megatron-core on the CPU (gloo), fp32, global data order (every
layout sees the same global batch of 16)."""
import os
import signal
import time
from pathlib import Path

import pytest

from pretrain import checkpoint as ckpt
from pretrain.checkpoint import PAUSE_ENV, PAUSE_MARKER
from tests.conftest import launch, metrics, to_universal

pytestmark = pytest.mark.slow
GLOBAL_BATCH, STEPS = 16, 3
COMMON = ("data.order=global", "data.workers=0", f"train.steps={STEPS}", "train.fingerprints=true")  # "batches"


def run(out, data, tp, pp, dp, *overrides, resume=None):
    launch(out, data, *COMMON, f"train.micro_batch={GLOBAL_BATCH // dp}", *overrides, nproc=tp * pp * dp,
           ds_config="ds_configs/zero1.json", extra_args=("--tp", str(tp), "--pp", str(pp)), resume=resume)
    return metrics(out)


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    return {"root": tmp_path_factory.mktemp("layouts"), "data": tiny_data, "done": {}}


# in-training eval at the last step, gathered over TP and PP (it leaves the RNG and the training untouched)
EXTRA = {(2, 2, 1): (f"train.eval_every={STEPS}", "train.eval_limit=300")}


def get(runs, tp, pp, dp):
    key = (tp, pp, dp)
    if key not in runs["done"]:
        out = runs["root"] / f"tp{tp}pp{pp}dp{dp}"
        runs["done"][key] = (run(out, runs["data"], tp, pp, dp, *EXTRA.get(key, ())), out)
    return runs["done"][key]


def full_weights(runs, out):
    return ckpt.full_state_dict(to_universal(out, runs["root"] / (out.name + "-universal")))


@pytest.mark.parametrize("layout", [(2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 2, 1), (2, 1, 2)])
def test_layout_matches_single_process(runs, layout):
    ref, ref_out = get(runs, 1, 1, 1)
    got, out = get(runs, *layout)
    for step in range(1, STEPS + 1):
        assert got[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-5), (layout, step)
    # logged on every rank; at pp > 1 only the last stage holds logit_scale and sends it over the pipeline group
    assert got[STEPS]["logit_scale"] == pytest.approx(ref[STEPS]["logit_scale"], rel=1e-6), layout
    a, b = full_weights(runs, ref_out), full_weights(runs, out)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape, name
        assert (a[name] - b[name]).abs().max().item() <= 1e-5, (layout, name)


def test_tensor_parallel_does_not_double_count_samples(runs):
    """Features are gathered over the data-parallel group only: at tp=2 the loss sees 16 samples, not 32 (with
    the 16 duplicated as extra negatives the loss would rise by about log 2)."""
    ref, _ = get(runs, 1, 1, 1)
    got, _ = get(runs, 2, 1, 1)
    assert abs(got[1]["loss"] - ref[1]["loss"]) < 1e-5
    assert got[1]["batches"][0] == got[1]["batches"][1]  # both TP ranks of the one DP rank saw the same batch


def test_pipeline_feeds_from_the_first_stage_only(runs):
    """At (2,2,1) ranks 0-1 (stage 0, TP 0-1) read the one DP rank's batch; the last stage reads nothing and
    gets the loss from the pipeline (the same record on every rank)."""
    ref, _ = get(runs, 1, 1, 1)
    got, _ = get(runs, 2, 2, 1)
    assert got[1]["batches"][0] == got[1]["batches"][1] == ref[1]["batches"][0]
    assert got[1]["batches"][2] == got[1]["batches"][3] == []


@pytest.mark.parametrize("source, target", [((1, 1, 2), (2, 1, 1)), ((2, 1, 1), (1, 1, 2)), ((1, 1, 2), (2, 1, 2)),
                                            ((1, 1, 2), (2, 2, 1)), ((2, 2, 1), (1, 1, 2)), ((1, 2, 1), (2, 1, 1))])
def test_universal_checkpoint_reshards_between_layouts(runs, source, target):
    uninterrupted, _ = get(runs, *source)
    name = "-".join(map(str, source))  # plain names: ds_to_universal fails on paths with "(", "," or " "
    stopped = runs["root"] / f"stop-{name}"
    if not stopped.exists():
        run(stopped, runs["data"], *source, f"train.stop_after={STEPS - 1}")
    universal = runs["root"] / f"stop-{name}-universal" / f"step{STEPS - 1:08d}"
    if not universal.exists():
        universal = to_universal(stopped, universal.parent)
    resumed = run(runs["root"] / f"resume-{name}-to-{'-'.join(map(str, target))}", runs["data"], *target,
                  resume=str(universal))
    assert sorted(resumed) == [STEPS]
    assert abs(resumed[STEPS]["loss"] - uninterrupted[STEPS]["loss"]) <= 1e-6, (source, target)


def test_tensor_parallel_checkpoint_evaluates_like_its_single_process_twin(runs):
    """Issue 6: a checkpoint trained at (2,1,1) gives the (1,1,1) twin's zero-shot numbers, and so does the
    (2,2,1) run's in-training eval (the model gathered from TP shards and pipeline stages)."""
    import json
    import subprocess
    import sys
    results = []
    for layout in ((1, 1, 1), (2, 1, 1)):
        _, out = get(runs, *layout)
        path = out / "eval.json"
        subprocess.run([sys.executable, "-m", "eval", "--checkpoint", str(out), "--tasks", "fashion_mnist",
                        "--limit", "300", "--out", str(path)], check=True, capture_output=True)
        results.append(json.loads(path.read_text())[0]["metrics"])
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        assert results[0][key] == pytest.approx(results[1][key], abs=1e-6), key
    _, out = get(runs, 2, 2, 1)  # and the (2,2,1) run's own eval during training, of the same weights
    in_training = json.loads((out / "eval.jsonl").read_text().splitlines()[-1])
    assert in_training["step"] == STEPS
    for key in results[0]:
        assert in_training[f"fashion_mnist/{key}"] == pytest.approx(results[0][key], abs=1e-6), key


def signal_rank(proc, out, rank: int, after: str, signum) -> None:
    """A while_running callback: once the run prints `after`, send `signum` to rank `rank`'s process only (the
    launcher is left alone, as Slurm's srun forwards a signal to the tasks)."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if after in proc.output_path.read_text(errors="replace"):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if f"--local_rank={rank}".encode() in cmd and f"train.out_dir={out}".encode() in cmd:
                    os.kill(int(pid), signum)
                    return
        time.sleep(0.05)


def test_pipeline_run_preempted_requeued_resumes_exactly(runs, tiny_data, monkeypatch):
    """pp = 2 (one stage per rank), SIGUSR1 to the last stage's rank while the step-1 save pauses (a test-only
    hook): the ranks agree to stop after step 2, save it and exit 75; the rerun with --resume latest ends with the
    uninterrupted pp = 2 run's losses and weights."""
    ref, ref_out = get(runs, 1, 2, 1)
    out = runs["root"] / "pp2-preempted"
    monkeypatch.setenv("GROWCLIP_STOP_CHECK_EVERY", "1")
    monkeypatch.setenv(PAUSE_ENV, "2")
    proc = launch(out, tiny_data, *COMMON, f"train.micro_batch={GLOBAL_BATCH}", "train.save_every=1", nproc=2,
                  ds_config="ds_configs/zero1.json", extra_args=("--tp", "1", "--pp", "2"), check=False,
                  while_running=lambda p: signal_rank(p, out, 1, PAUSE_MARKER, signal.SIGUSR1))
    monkeypatch.delenv(PAUSE_ENV)
    assert "stopped by signal" in proc.stdout and "checkpoint saved; exit 75" in proc.stdout, proc.stdout[-3000:]
    assert ckpt.resolve(out) == (out / "checkpoints", "step00000002") and sorted(metrics(out)) == [1, 2]
    got = run(out, tiny_data, 1, 2, 1, resume="latest")
    assert sorted(got) == list(range(1, STEPS + 1))
    assert [got[s]["loss"] for s in got] == [ref[s]["loss"] for s in got]
    a, b = full_weights(runs, ref_out), full_weights(runs, out)
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max().item() == 0 for k in a)
