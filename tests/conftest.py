"""Shared fixtures: small real data (Fashion-MNIST shards + a trained tokenizer) and a DeepSpeed launcher."""
import json
import os

# Triton reads these when it is first imported, and any test module may import `kernels` (through the model or
# the loss) before tests/kernels is collected: set them for the whole session, before any import below.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("GROWCLIP_KERNELS_POISON", "1")
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 512


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int = 0, world: int = 1, port: int | None = None, **extra: str) -> dict:
    """The environment the launcher gives one rank (one OpenMP thread), for a process started without it."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port or free_port()),
            "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), **extra}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """2,400 Fashion-MNIST training pairs in 8 shards, and a 512-id tokenizer trained on them + WordNet."""
    from pretrain.data.prepare import main as prepare
    from pretrain.data.tokenizer import main as train_tokenizer
    root = tmp_path_factory.mktemp("tiny_data")
    prepare(["fashion_mnist", "--split", "train", "--out", str(root / "shards"), "--shard-size", "300",
             "--limit", "2400"])
    train_tokenizer(["--shards", str(root / "shards"), "--wordnet", "/usr/share/wordnet", "--vocab", str(VOCAB),
                     "--max-sentences", "20000", "--out", str(root / "tok")])
    return {"shards": str(root / "shards"), "tokenizer": str(root / "tok" / "tokenizer.model")}


# A smaller tiny model, so each multi-rank run takes seconds on two cores.
SMALL_MODEL = ["model.vision.layers=2", "model.vision.width=64", "model.vision.heads=2", "model.text.layers=2",
               "model.text.width=64", "model.text.heads=2", f"model.text.vocab={VOCAB}", "model.text.context=16",
               "model.embed_dim=64"]


def launch(out_dir: Path, data: dict, *overrides: str, nproc: int = 2, ds_config: str = "ds_configs/zero2.json",
           resume: str | None = None, check: bool = True, extra_args=(), while_running=None,
           config: str = "configs/demo.yaml", small_model: bool = True) -> subprocess.CompletedProcess:
    """`deepspeed --num_gpus N pretrain/main.py ...` on the CPU (gloo), as a user runs it. extra_args: launcher-level
    flags of main.py, e.g. ("--tp", "2"); while_running: called with the Popen while the run goes on (its output
    goes to files meanwhile, so a long wait cannot fill a pipe); config, small_model=False: another run config, whose
    model section is left alone (model.init_from). Loader workers are off (`data.workers=0`) unless the overrides
    turn them on: tests of the workers ask for them (tests/train/test_deepspeed_runs.py, test_many_growths.py)."""
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(nproc), "--master_port",
           str(free_port()), "pretrain/main.py", "--config", config, "--deepspeed_config", ds_config,
           *extra_args]
    if resume:
        cmd += ["--resume", resume]
    cmd += [f"data.shards={data['shards']}", f"data.tokenizer={data['tokenizer']}", f"train.out_dir={out_dir}",
            "train.micro_batch=16", "train.log_every=1", "train.warmup=2", "data.shuffle_buffer=200",
            "data.workers=0",  # no loader processes (nor their forkserver) unless a test asks: start-up dominates here
            *(SMALL_MODEL if small_model else []), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if while_running is None:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    else:  # in its own session (a callback may kill the whole group); `running.output_path`: its stdout so far
        import signal
        import tempfile
        with tempfile.NamedTemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            running = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, text=True,
                                       start_new_session=True)
            running.output_path = Path(out.name)
            try:
                while_running(running)
                running.wait(timeout=900)
            finally:
                if running.poll() is None:
                    os.killpg(running.pid, signal.SIGKILL)
                    running.wait()
            out.seek(0), err.seek(0)
            proc = subprocess.CompletedProcess(cmd, running.returncode, out.read(), err.read())
    if check and proc.returncode != 0:
        raise AssertionError(f"run failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def to_universal(run_or_tag: Path, out_root: Path) -> Path:
    """`python -m deepspeed.checkpoint.ds_to_universal` on a run's latest checkpoint; returns the new tag dir."""
    from pretrain import checkpoint as ckpt
    base, tag = ckpt.resolve(run_or_tag)
    out = Path(out_root) / tag
    proc = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                           str(base / tag), "--output_folder", str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"ds_to_universal failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return out


def metrics(out_dir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows}
