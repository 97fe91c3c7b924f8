"""slurm/train.sbatch on a real local Slurm (no mocks; two slurmd on this host, nodes node1 and node2): a 2-rank
CPU run on one node to completion, and runs preempted with `scancel --signal=USR1 --batch` that save, requeue
themselves, resume and end with the uninterrupted run's weights, bit for bit. One uninterrupted single-node run,
with a growth inside, is the reference of both preemption tests: one runs on two nodes and is preempted before the
growth, one on one node while the growth's new trainer starts."""
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from pretrain import checkpoint as ckpt
from tests.conftest import ROOT, SMALL_MODEL, metrics

STEPS, GROW_AT = 12, 8  # a step takes ~0.1 s here: room for the signal to land before the growth
GROWTH = [f"growth.at_steps=[{GROW_AT}]", "growth.moves=[vision.layers+=1]"]


def sbatch_args(out: Path, tiny_data: dict, log: Path, nodes: int = 1) -> list[str]:
    """2 ranks: both on one node, or (nodes=2) one on each of two (scripts/slurm_local.sh runs node1 and node2,
    each its own slurmd, on this host)."""
    return ["sbatch", "--parsable", "--gpus-per-node=0", f"--nodes={nodes}", f"--ntasks-per-node={2 // nodes}",
            "--cpus-per-task=1",
            "--time=00:10:00", f"--output={log}", "slurm/train.sbatch", "configs/demo.yaml", "ds_configs/zero2.json",
            f"data.shards={tiny_data['shards']}", f"data.tokenizer={tiny_data['tokenizer']}", f"train.out_dir={out}",
            f"train.steps={STEPS}", "train.micro_batch=16", "train.log_every=1", "train.warmup=2",
            "data.shuffle_buffer=200", *SMALL_MODEL, *GROWTH]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "GROWCLIP_STOP_CHECK_EVERY": "1"}


def job(job_id: str) -> dict:
    line = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                          check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", line))


def final_weights(out: Path) -> dict:
    return ckpt.full_state_dict(out / "checkpoints" / f"step{STEPS:08d}")


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.fixture(scope="module")
def reference(slurm, tiny_data, tmp_path_factory):
    """Completion: `sbatch --wait slurm/train.sbatch` on 2 CPU ranks, with a growth at step GROW_AT."""
    base = tmp_path_factory.mktemp("slurm_ref")
    log = base / "job.out"
    proc = subprocess.run(["sbatch", "--wait", *sbatch_args(base / "run", tiny_data, log)[1:]], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=600)
    output = log.read_text() if log.exists() else ""
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{output[-4000:]}"
    assert "2 rank(s)" in output, output[-2000:]
    return base / "run"


def test_train_sbatch_completes(reference):
    rows = metrics(reference)
    assert sorted(rows) == list(range(1, STEPS + 1))
    assert (reference / "grown" / f"step{GROW_AT}").is_dir()
    assert ckpt.read_client_state(reference / "checkpoints" / f"step{STEPS:08d}")["growth_history"]


def preempt(tmp_path: Path, tiny_data: dict, when, nodes: int = 1) -> tuple[Path, str]:
    """Submit, send USR1 to the batch shell once `when(out)` holds, wait for the requeued job to complete."""
    out, log = tmp_path / "run", tmp_path / "job.out"
    job_id = subprocess.run(sbatch_args(out, tiny_data, log, nodes), cwd=ROOT, env=env(), capture_output=True,
                            text=True, check=True).stdout.strip().split(";")[0]
    deadline = time.time() + 300
    while not when(out):
        assert job(job_id)["JobState"] in ("PENDING", "RUNNING"), (job(job_id), log.read_text()[-3000:])
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)
    while (state := job(job_id))["JobState"] != "COMPLETED" or state.get("Restarts") == "0":
        assert state["JobState"] in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING"), (state,
                                                                                        log.read_text()[-4000:])
        assert time.time() < deadline + 300, log.read_text()[-4000:]
        time.sleep(0.5)
    output = log.read_text()
    assert state["Restarts"] == "1", output[-3000:]
    assert "requeueing job" in output and "restart 1" in output, output[-3000:]
    return out, output


def test_two_node_job_preempted_requeues_and_matches(reference, tiny_data, tmp_path):
    """A 2-node allocation, one rank per node: ranks, rendezvous address and port come from the allocation (rank 0
    on node1, rank 1 on node2, at node1's NodeAddr); USR1 mid-run, before the growth: saved at the step it reached,
    requeued on both nodes, resumed, grown, finished with the single-node run's weights bit for bit."""
    def running(out):
        return (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip() != ""
    out, output = preempt(tmp_path, tiny_data, running, nodes=2)
    assert "2 node(s) x 1 rank(s)" in output, output[-3000:]
    placed = set(re.findall(r"rank (\d) of 2 on node (node\d) \(local rank 0\), rendezvous 127\.0\.0\.1:\d+", output))
    assert placed == {("0", "node1"), ("1", "node2")}, output[-3000:]  # in both the first run and the requeued one
    stopped = re.search(r"stopped by signal \S+ after step (\d+), checkpoint saved", output)
    assert stopped and int(stopped.group(1)) < GROW_AT, output[-3000:]
    assert (out / "checkpoints" / f"step{int(stopped.group(1)):08d}").is_dir()
    assert sorted(metrics(out)) == list(range(1, STEPS + 1))
    assert len(ckpt.read_client_state(out / "checkpoints" / f"step{STEPS:08d}")["growth_history"]) == 1
    assert_same(final_weights(out), final_weights(reference))


def test_preempted_during_growth_grows_once(reference, tiny_data, tmp_path):
    """USR1 once the growth at GROW_AT has been written, while the grown trainer starts: it stops without a step,
    and the rerun goes on from OUT/grown/step<GROW_AT> (grown exactly once)."""
    out, output = preempt(tmp_path, tiny_data, lambda o: (o / "grown" / f"step{GROW_AT}").is_dir())
    assert "stopped by signal" not in output, output[-3000:]  # no step after the growth before the stop
    assert f"the growth at step {GROW_AT} was written before the run stopped" in output, output[-3000:]
    assert sorted(metrics(out)) == list(range(1, STEPS + 1))
    assert len(ckpt.read_client_state(out / "checkpoints" / f"step{STEPS:08d}")["growth_history"]) == 1
    assert_same(final_weights(out), final_weights(reference))
