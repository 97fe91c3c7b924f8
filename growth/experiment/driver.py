"""Run a plan: every arm as an ordinary run folder OUT/ARM, then its held-out curve and its eval.

Phases of an arm, each skipped when its output exists (so an interrupted experiment resumes where it stopped):
1. **train** -> `OUT/ARM/train.json`. `launch: process` (the full plan): one `deepspeed --num_gpus N
   pretrain/main.py --config ... --resume latest [overrides]` per arm, as a user runs it; an unfinished arm
   resumes from its latest checkpoint. `launch: inprocess` (the smoke plan): one `deepspeed` launch of
   growth/experiment/worker.py runs every arm's `GrowingRun` (what pretrain/main.py runs) one after the other in
   the same ranks, saving the 30-60 s start-up of each launch. A forked arm (`fork: auto`) starts from the
   automatic arm's save at the first stage boundary, converted once to a universal checkpoint under
   `OUT/forks/` (its metrics.jsonl starts with the automatic arm's records up to there): the runs are the same
   up to that step (same seed, config and data; only growth.* settings differ), so it is not trained twice.
2. **held-out curve** -> `OUT/ARM/heldout.jsonl` (growth/experiment/heldout.py), over every saved checkpoint.
3. **eval** -> `OUT/ARM/eval.json`: `python -m eval --checkpoint OUT/ARM --tasks ...` (run in this process; the
   same code and arguments). Its presence marks the arm finished: the next invocation skips it.
Then, with `prune: true`, the intermediate checkpoints and grown/ folders are deleted (the final checkpoint
stays). Wall times of each phase go to `OUT/ARM/wall.jsonl`; the invocations, commit and machine to
`OUT/experiment.json`.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import arms as A
from . import heldout as H
from .plan import Arm, Plan, PlanError, load_plan

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT_JSON = "experiment.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def git(*args: str, strip: bool = True) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.strip() if strip else out


def provenance() -> dict:
    """Commit (and whether tracked files differ from it), machine, software, load: what the report names."""
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
        mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal")), "0")
    except OSError:
        mem = "0"
    import torch
    try:
        import deepspeed
        ds_version = deepspeed.__version__
    except ImportError:
        ds_version = ""
    dirty = [line[3:] for line in git("status", "--porcelain", "-uno", strip=False).splitlines() if line.strip()]
    return {"commit": git("rev-parse", "HEAD"), "dirty": dirty, "host": platform.node(),
            "machine": f"{platform.system()} {platform.release()} {platform.machine()}", "cpu": cpu,
            "cores": os.cpu_count(), "mem_gib": round(int(mem) / 2 ** 20, 1), "python": platform.python_version(),
            "torch": torch.__version__, "deepspeed": ds_version, "loadavg": list(os.getloadavg()),
            "cuda": torch.cuda.is_available()}


def tiny_data(spec: dict, folder: Path, echo=print) -> None:
    """The smoke plan's data: N Fashion-MNIST training pairs in small shards and a small tokenizer (as
    tests/conftest.py's tiny_data), prepared once. Reused when FOLDER/shards and FOLDER/tok exist."""
    if (folder / "shards" / "manifest.json").is_file() and (folder / "tok" / "tokenizer.model").is_file():
        return
    from pretrain.data.prepare import main as prepare
    from pretrain.data.tokenizer import main as train_tokenizer
    echo(f"[experiment] preparing the smoke data in {folder}")
    prepare(["fashion_mnist", "--split", "train", "--out", str(folder / "shards"), "--shard-size",
             str(spec.get("shard_size", 300)), "--limit", str(spec.get("samples", 2400))])
    train_tokenizer(["--shards", str(folder / "shards"), "--wordnet", "/usr/share/wordnet", "--vocab",
                     str(spec.get("vocab", 512)), "--max-sentences", "20000", "--out", str(folder / "tok")])


def variables(out: Path) -> dict:
    return {"TINY": str(out / "tiny-data")}


def open_plan(path: str | Path, out: Path, smoke: bool, echo=print) -> Plan:
    plan = load_plan(path, smoke, variables(out))
    if plan.tiny_data:
        tiny_data(plan.tiny_data, out / "tiny-data", echo)
    return plan


# ---- per-arm state ----------------------------------------------------------------------------------------
def cpu_seconds(who=resource.RUSAGE_SELF) -> float:
    """User + system CPU seconds of this process (or of its waited-for children): a measure of work that the
    load of a shared machine does not inflate, unlike wall time."""
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def log_wall(run: Path, phase: str, seconds: float, **extra) -> None:
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "wall.jsonl", "a") as f:
        f.write(json.dumps({"phase": phase, "seconds": round(seconds, 1), "ended": now(), **extra}) + "\n")


def has_checkpoint(run: Path) -> bool:
    return (run / "checkpoints" / "latest").is_file()


def fork_dir(out: Path, name: str) -> Path:
    return out / "forks" / name


def resume_of(out: Path, arm: Arm) -> str:
    """`latest`, except for a forked arm that has no checkpoint of its own yet: the fork's universal save."""
    run = out / arm.name
    if arm.fork and not has_checkpoint(run):
        folder = fork_dir(out, arm.fork)
        if not (folder / "latest").is_file():
            raise PlanError(f"{arm.name}: the fork {folder} of {arm.fork} is missing; run {arm.fork} first")
        return str(folder)
    return "latest"


def start_fork(out: Path, arm: Arm) -> None:
    """A forked arm's run folder begins with the automatic arm's metrics up to the fork step."""
    run = out / arm.name
    if arm.fork and not has_checkpoint(run):
        run.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fork_dir(out, arm.fork) / "metrics.jsonl", run / "metrics.jsonl")


def make_fork(plan: Plan, out: Path, arm: Arm, echo=print) -> None:
    """For the arms that fork from `arm`: its save at the first stage boundary as a universal checkpoint
    (OUT/forks/ARM/<tag>, with tokenizer, `latest`, `latest_universal`) and its metrics up to there."""
    folder = fork_dir(out, arm.name)
    if not plan.forks_of(arm.name) or (folder / "latest").is_file():
        return
    from growth import universal
    train = A.read_train(out / arm.name)
    if not train["stage_steps"]:
        raise PlanError(f"{arm.name}: forks need data stages (the fork is the save at the first stage boundary)")
    step = train["stage_steps"][0]
    tag = out / arm.name / "checkpoints" / f"step{step:08d}"
    if not tag.is_dir():
        raise PlanError(f"{tag}: missing; the fork point of {arm.name} was pruned or never saved")
    work = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    echo(f"[experiment] fork of {arm.name} at step {step}: converting {tag} to universal")
    universal.to_universal(tag, work / tag.name)
    shutil.copyfile(tag / "tokenizer.model", work / tag.name / "tokenizer.model")
    for name in ("latest", "latest_universal"):
        (work / name).write_text(tag.name)
    lines = [line for line in (out / arm.name / "metrics.jsonl").read_text().splitlines()
             if line.strip() and json.loads(line)["step"] <= step]
    (work / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    command = (f"python -m deepspeed.checkpoint.ds_to_universal --input_folder {tag} --output_folder "
               f"{folder / tag.name}  # + tokenizer.model, latest, latest_universal, and {arm.name}'s "
               f"metrics.jsonl up to step {step}")
    (work / "fork.json").write_text(json.dumps({"from": arm.name, "step": step, "tag": str(tag), "command": command}))
    shutil.rmtree(folder, ignore_errors=True)
    work.rename(folder)


def note_command(run: Path, command: str) -> None:
    """Every launch of an arm (a resumed arm has several), in order, in OUT/ARM/commands.txt."""
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "commands.txt", "a") as f:
        f.write(command + "\n")


def finish_training(plan: Plan, out: Path, arm: Arm, command: str, seconds: float, facts: dict) -> dict:
    """Check that the arm reached its last step; write train.json; make the forks other arms start from."""
    from pretrain import checkpoint as ckpt
    run = out / arm.name
    base, tag = ckpt.resolve(run)
    step = ckpt.read_client_state(base / tag)["step"]
    if step != facts["steps"]:
        raise RuntimeError(f"{arm.name}: training stopped at step {step} of {facts['steps']}; see {run}/train.log")
    launches = (run / "commands.txt").read_text().splitlines() if (run / "commands.txt").is_file() else [command]
    summary = A.summarize(run, arm, {**facts, "commands": launches, "commit": git("rev-parse", "HEAD")})
    (run / A.TRAIN_JSON).write_text(json.dumps(summary, indent=2))
    log_wall(run, "train", seconds, **({"cpu_s": facts["cpu_s"]} if "cpu_s" in facts else {}))
    make_fork(plan, out, arm)
    return summary


def train_process(plan: Plan, out: Path, arm: Arm, echo=print) -> None:
    run = out / arm.name
    start_fork(out, arm)
    args, facts = A.main_args(plan, arm, out, resume_of(out, arm))
    deepspeed = str(Path(sys.executable).parent / "deepspeed")
    cmd = [deepspeed, "--num_gpus", str(plan.nproc), "--master_port", str(free_port()), "pretrain/main.py", *args]
    shown = shlex.join(["deepspeed", "--num_gpus", str(plan.nproc), "pretrain/main.py", *args])
    note_command(run, shown)
    echo(f"[experiment] {arm.name}: {shown}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    t0, c0 = time.time(), cpu_seconds(resource.RUSAGE_CHILDREN)
    with open(run / "train.log", "a") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.time() - t0
    facts["cpu_s"] = round(cpu_seconds(resource.RUSAGE_CHILDREN) - c0, 1)
    if rc != 0:
        log_wall(run, "train-failed", seconds, rc=rc, cpu_s=facts["cpu_s"])
        tail = (run / "train.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{arm.name}: training failed (exit {rc}); the next invocation resumes it. Log tail:\n"
                           f"{tail}")
    finish_training(plan, out, arm, shown, seconds, facts)


def train_inprocess(plan: Plan, out: Path, todo: list[Arm], smoke: bool, echo=print) -> None:
    """One deepspeed launch of worker.py for every arm still to train (the smoke plan)."""
    deepspeed = str(Path(sys.executable).parent / "deepspeed")
    cmd = [deepspeed, "--num_gpus", str(plan.nproc), "--master_port", str(free_port()),
           "growth/experiment/worker.py", "--plan", str(plan.path), "--out", str(out),
           "--arms", ",".join(a.name for a in todo)] + (["--smoke"] if smoke else [])
    echo(f"[experiment] training {len(todo)} arm(s) in one launch: {shlex.join(cmd[:1] + cmd[3:])}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    t0, c0 = time.time(), cpu_seconds(resource.RUSAGE_CHILDREN)
    with open(out / "worker.log", "a") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    with open(out / "wall.jsonl", "a") as f:
        f.write(json.dumps({"phase": "worker", "seconds": round(time.time() - t0, 1), "arms": len(todo),
                            "cpu_s": round(cpu_seconds(resource.RUSAGE_CHILDREN) - c0, 1), "ended": now(),
                            "rc": rc}) + "\n")
    if rc != 0:
        tail = (out / "worker.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the training launch failed (exit {rc}); the next invocation resumes. Log tail:\n{tail}")


def heldout_phase(plan: Plan, out: Path, arm: Arm, batches: H.Batches, device: str = "cpu") -> None:
    run = out / arm.name
    if (run / H.HELDOUT_JSONL).is_file():
        return
    t0, c0 = time.time(), cpu_seconds()
    inherited = []
    if arm.fork:
        fork_step = json.loads((fork_dir(out, arm.fork) / "fork.json").read_text())["step"]
        inherited = [dict(r, inherited_from=arm.fork) for r in H.read(out / arm.fork) if r["step"] <= fork_step]
    rows = H.evaluate_run(run, batches, A.flops_curve(run), inherited, device=device)
    H.write(run, rows)
    log_wall(run, "heldout", time.time() - t0, points=len(rows), cpu_s=round(cpu_seconds() - c0, 1))


def eval_args(plan: Plan, out: Path, arm: Arm, dest: Path, device: str = "cpu") -> list[str]:
    args = ["--checkpoint", str(out / arm.name), "--tasks", plan.tasks_of(arm), "--out", str(dest),
            "--batch-size", str(plan.eval_batch), "--device", device]
    return args + (["--limit", str(plan.eval_limit)] if plan.eval_limit else [])


def eval_phase(plan: Plan, out: Path, arm: Arm, echo=print, device: str = "cpu") -> None:
    from eval.__main__ import main as eval_main
    run = out / arm.name
    tmp = run / "eval.json.tmp"
    args = eval_args(plan, out, arm, tmp, device)
    t0, c0 = time.time(), cpu_seconds()
    rc = eval_main(args)
    if rc not in (0, None) or not tmp.is_file():
        raise RuntimeError(f"{arm.name}: python -m eval {shlex.join(args)} failed ({rc})")
    (run / "eval_command.txt").write_text(shlex.join(["python", "-m", "eval", *eval_args(
        plan, out, arm, run / "eval.json", device)]) + "\n")
    tmp.replace(run / "eval.json")
    log_wall(run, "eval", time.time() - t0, cpu_s=round(cpu_seconds() - c0, 1))


def prune(out: Path, arm: Arm) -> None:
    """Every checkpoint tag but the latest, and grown/ (the growth history is in the final checkpoint and
    train.json). Forks live under OUT/forks and stay."""
    from pretrain import checkpoint as ckpt
    run = out / arm.name
    _, latest = ckpt.resolve(run)
    for tag in H.checkpoint_tags(run):
        if tag.name != latest:
            shutil.rmtree(tag, ignore_errors=True)
    shutil.rmtree(run / "grown", ignore_errors=True)


def record_invocation(out: Path, plan: Plan, argv: list[str], key: str, value) -> None:
    path = out / EXPERIMENT_JSON
    data = json.loads(path.read_text()) if path.is_file() else {"invocations": []}
    if key == "start":
        data.update({"plan": str(plan.path), "plan_text": plan.text, "smoke": plan.smoke, "name": plan.name,
                     "description": plan.description,
                     "launch": plan.launch, "nproc": plan.nproc, "seeds": plan.seeds,
                     "compute": plan.compute, "target": plan.target, "start": plan.start,
                     "arms": [a.__dict__ for a in plan.arms]})
        data["invocations"].append({"argv": argv, "started": now(), **value})
    else:
        data["invocations"][-1][key] = value
    path.write_text(json.dumps(data, indent=2))


def check_device(device: str) -> None:
    """`--device cuda` needs a CUDA GPU (training then runs on the GPUs deepspeed finds; nproc is the plan's)."""
    import torch
    if device not in ("cpu", "cuda"):
        raise PlanError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise PlanError("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False)")


def run_plan(plan_path: str | Path, out: str | Path, smoke: bool = False, only: list[str] | None = None,
             argv: list[str] | None = None, echo=print, device: str = "cpu") -> list[str]:
    """Run (or resume) the plan; returns the arms finished by this invocation. `device`: where the held-out
    curve and the eval run (training runs where deepspeed's accelerator is: the GPUs when there are any)."""
    check_device(device)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    plan = open_plan(plan_path, out, smoke, echo)
    selected = [plan.arm(n) for n in only] if only else plan.arms
    gpu = {}
    if device == "cuda":
        import torch
        gpu = {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count()}
    record_invocation(out, plan, argv or [], "start", {**provenance(), "device": device, **gpu})
    sets = H.prepare(plan.heldout, out, echo)
    batches = H.Batches(sets["sets"], sets["batch"], sets["batches"])
    finished = []
    todo = [a for a in selected if not (out / a.name / "eval.json").is_file()]
    for a in plan.arms:
        if a not in selected:
            continue
        if (out / a.name / "eval.json").is_file():
            echo(f"[experiment] {a.name}: finished before, skipped")
    if plan.launch == "inprocess":
        to_train = [a for a in todo if not (out / a.name / A.TRAIN_JSON).is_file()]
        for a in to_train:
            if a.fork and (out / a.fork / A.TRAIN_JSON).is_file():
                make_fork(plan, out, plan.arm(a.fork), echo)
        if to_train:
            train_inprocess(plan, out, to_train, smoke, echo)
    for arm in todo:
        run = out / arm.name
        if arm.needs and not (out / arm.needs / A.TRAIN_JSON).is_file():
            raise PlanError(f"{arm.name} needs {arm.needs}, which has not finished training; run it first")
        if arm.fork:  # a fork added to the plan after its source finished (fails clearly if it was pruned)
            make_fork(plan, out, plan.arm(arm.fork), echo)
        if not (run / A.TRAIN_JSON).is_file():
            train_process(plan, out, arm, echo)
        heldout_phase(plan, out, arm, batches, device)
        eval_phase(plan, out, arm, echo, device)
        if plan.prune:
            prune(out, arm)
        finished.append(arm.name)
        echo(f"[experiment] {arm.name}: finished")
    record_invocation(out, plan, argv or [], "ended", now())
    record_invocation(out, plan, argv or [], "seconds", round(time.time() - t0, 1))
    return finished
