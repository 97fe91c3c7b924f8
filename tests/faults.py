"""Fault injection: kill -9 a rank of a real 2-rank run at a random moment, resume with `--resume latest`, and
check the continuation equals an uninterrupted run bit for bit (issue 13, item 4; docs/reliability.md).

    python -m tests.faults --trials 20 --seed 0            # prepares tiny data under --work, then the trials
    python -m tests.faults --seed 0 --only 7               # replays trial 7 of seed 0 (same kill plan)

Each trial starts the tiny config (tests/conftest.py's SMALL_MODEL, Fashion-MNIST shards prepared as the
`tiny_data` fixture does, fp32, ZeRO --zero, --steps steps, a save every --save-every steps) on 2 CPU ranks
(gloo), in its own session. It SIGKILLs a random rank, then the whole process group (the launcher and the other
rank die with it, as they do on a node), then restarts the same command with `--resume latest` and lets it
finish. It checks:
  - survived: the restart exits 0 and writes the final checkpoint;
  - bit-identical: the final checkpoint's full fp32 weights (pretrain.checkpoint.full_state_dict) equal those of
    one uninterrupted reference run (shared by all trials), tensor for tensor with torch.equal;
  - log: metrics.jsonl holds each step 1..steps once, with the reference's losses exactly.
The loss of work is the steps redone: the last step finished when the kill landed (the last step in
metrics.jsonl) minus the step the restart resumed from (`latest` after the kill; 0 without one).

Kill plans (seeded: trial i draws from random.Random(f"{seed}:{i}"), so `--only i` replays it):
  - "save" (a share --in-save of the trials, spread evenly, trial 1 of 3 at 1/3): the run gets
    GROWCLIP_TEST_PAUSE_IN_SAVE=--pause, so every rank sleeps in pretrain/checkpoint.py's save after DeepSpeed
    wrote `<tag>.tmp` and before rank 0 renames it; at the j-th save's marker line the kill lands inside it;
  - "time": after step k (0: from the launch, during set-up) plus a random part of a step's time (measured in
    the reference run), wherever the run is then: in a step, the data loader, DeepSpeed's write of a save.
Growth kinds (`--kind growth-live,growth-saved,search`, trial i of the (i mod n)-th; tests/faults_growth.py): runs
that grow once after step 3 (a written growth from the live engine, the same through the saved checkpoint, an
automatic growth with its search at a data-stage boundary), killed inside one phase of the growth (a pause of
--pause s: search-train, search-gather, converted, written, restart) or at a random time in the growth step. Each
kind has its own reference run. Besides the three checks above: the growth is taken once (the final history and
grown folders are the reference's), the winner is the same, and no half-written folder is ever taken (every
folder the restart resumed from, `trainer: resumed from`, is complete under its final name; none is left
incomplete under a final name). Their loss of work counts the steps redone from the step the restart really
resumed from, and whether the growth (or the search) was done again.
Exit status 0 when every trial passes all its checks; 1 otherwise. Results, one JSON
line a trial, go to WORK/results.jsonl as each trial ends; each trial's run folder and logs stay under WORK.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests import faults_growth as fg

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 512
# tests/conftest.py's SMALL_MODEL (kept equal; conftest is not imported here so the tool runs without pytest)
SMALL_MODEL = ["model.vision.layers=2", "model.vision.width=64", "model.vision.heads=2", "model.text.layers=2",
               "model.text.width=64", "model.text.heads=2", f"model.text.vocab={VOCAB}", "model.text.context=16",
               "model.embed_dim=64"]
PAUSE_ENV = "GROWCLIP_TEST_PAUSE_IN_SAVE"
PAUSE_MARKER = "GROWCLIP_TEST_PAUSE_IN_SAVE:"
RUN_TIMEOUT = 900  # s, one launch


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_data(work: Path) -> dict:
    """As tests/conftest.py's tiny_data: 2,400 Fashion-MNIST pairs in 8 shards and a 512-id tokenizer (data/raw
    from scripts/fetch_data.sh)."""
    from pretrain.data.prepare import main as prepare
    from pretrain.data.tokenizer import main as train_tokenizer
    root = work / "data"
    shards, tok = root / "shards", root / "tok" / "tokenizer.model"
    if not (shards / "manifest.json").is_file():
        prepare(["fashion_mnist", "--split", "train", "--out", str(shards), "--shard-size", "300", "--limit", "2400"])
    if not tok.is_file():
        train_tokenizer(["--shards", str(shards), "--wordnet", "/usr/share/wordnet", "--vocab", str(VOCAB),
                         "--max-sentences", "20000", "--out", str(tok.parent)])
    return {"shards": str(shards), "tokenizer": str(tok)}


def run_length(args, kind: str) -> tuple[int, int]:
    """(train.steps, train.save_every): --steps and --save-every for `train`, the growth kinds' own otherwise."""
    return (args.steps, args.save_every) if kind == "train" else (fg.STEPS, fg.SAVE_EVERY)


def command(out: Path, data: dict, args, resume: bool, kind: str = "train") -> list[str]:
    steps, save_every = run_length(args, kind)
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           "pretrain/main.py", "--config", "configs/demo.yaml", "--deepspeed_config",
           f"ds_configs/zero{args.zero}.json"]
    if resume:
        cmd += ["--resume", "latest"]
    return cmd + [f"data.shards={data['shards']}", f"data.tokenizer={data['tokenizer']}", f"train.out_dir={out}",
                  "train.micro_batch=16", "train.log_every=1", "train.warmup=2", "data.shuffle_buffer=200",
                  *SMALL_MODEL, f"train.steps={steps}", f"train.save_every={save_every}",
                  *(fg.overrides(kind, data) if kind != "train" else [])]


def start(cmd: list[str], log: Path, pause: dict | None = None) -> subprocess.Popen:
    """The launcher in a session of its own (its process group holds the ranks and their loader workers); `pause`:
    the test pause variables it gets (none otherwise)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop(PAUSE_ENV, None)
    env.pop(fg.PAUSE_ENV, None)
    env.update(pause or {})
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def rank_pids(proc: subprocess.Popen) -> dict[int, int]:
    """{RANK: pid} of the launcher's rank processes (pretrain/main.py), from their environment."""
    import psutil
    ranks = {}
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return ranks
    for c in children:
        try:
            if any(a.endswith("pretrain/main.py") for a in c.cmdline()):
                rank = c.environ().get("RANK")
                if rank is not None and int(rank) not in ranks:
                    ranks[int(rank)] = c.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            continue
    return ranks


def logged_steps(out: Path) -> list[int]:
    """The steps in OUT/metrics.jsonl, in file order (a line a kill cut short is left out)."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(int(json.loads(line)["step"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return steps


def losses(out: Path) -> dict[int, list[float]]:
    rows = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows.setdefault(r["step"], []).append(r["loss"])
    return rows


def marker_count(log: Path, marker: str = PAUSE_MARKER) -> int:
    return log.read_bytes().count(marker.encode()) if log.is_file() else 0


def tail(log: Path, n: int = 3000) -> str:
    return log.read_bytes()[-n:].decode(errors="replace") if log.is_file() else ""


def final_weights(out: Path, steps: int):
    import contextlib
    import io

    from pretrain import checkpoint as ckpt
    with contextlib.redirect_stdout(io.StringIO()):  # zero_to_fp32 reports its progress
        return ckpt.full_state_dict(out / "checkpoints" / f"step{steps:08d}")


def reference(work: Path, data: dict, args, kind: str = "train") -> dict:
    """The uninterrupted run of a kind: its final weights, its losses, the set-up time (launch to step 1 logged),
    the mean time of a step after it (saves and the growth included), and for a growth kind the time from the
    growth step logged to the next step logged (`growth_s`) and what it grew (faults_growth.growth_state). A
    reference of another config is not reused."""
    name = "reference" if kind == "train" else f"reference-{kind}"
    out, log = work / name, work / f"{name}.log"
    steps, save_every = run_length(args, kind)
    key = json.dumps({"steps": steps, "save_every": save_every, "zero": args.zero, "data": data,
                      **({"kind": kind, "overrides": fg.overrides(kind, data)} if kind != "train" else {})})
    if (work / f"{name}.key").is_file() and (work / f"{name}.key").read_text() != key:
        shutil.rmtree(out, ignore_errors=True)
    (work / f"{name}.key").write_text(key)
    if not (out / "checkpoints" / f"step{steps:08d}").is_dir():
        shutil.rmtree(out, ignore_errors=True)
        log.unlink(missing_ok=True)
        t0 = time.time()
        proc = start(command(out, data, args, resume=False, kind=kind), log)
        seen = {}  # step: when it first showed in metrics.jsonl
        while proc.poll() is None:
            for s in logged_steps(out):
                seen.setdefault(s, time.time())
            time.sleep(0.005)
        if proc.returncode != 0:
            raise SystemExit(f"faults: the reference run failed ({proc.returncode}):\n{tail(log)}")
        first, last = seen.get(1, time.time()), seen.get(steps, time.time())
        timing = {"startup_s": first - t0, "step_s": max((last - first) / max(steps - 1, 1), 0.01)}
        if kind != "train":
            timing["growth_s"] = seen.get(fg.AT + 1, time.time()) - seen.get(fg.AT, time.time())
        (work / f"{name}.json").write_text(json.dumps(timing))
    timing = json.loads((work / f"{name}.json").read_text())
    ref = {"out": out, "weights": final_weights(out, steps), "losses": losses(out), **timing}
    if kind != "train":
        ref["growth"] = fg.growth_state(out)
    return ref


def in_save(i: int, share: float) -> bool:
    """Trials inside a save, spread evenly: i is one when floor((i + 1) * share) steps past floor(i * share)."""
    return int((i + 1) * share + 1e-9) > int(i * share + 1e-9)


def plan(i: int, args, ref: dict, kind: str = "train", kinds: tuple[str, ...] = ("train",)) -> dict:
    rng = random.Random(f"{args.seed}:{i}")
    p = {"trial": i, "seed": args.seed, "victim": rng.randrange(2), "kind": kind}
    if kind != "train":  # a growth phase's pause, or a time inside the growth step (faults_growth.py)
        phase = fg.phase_of(kind, i, list(kinds))
        if phase == "time":
            p.update(mode="time", after_step=fg.AT, delay=round(rng.uniform(0.0, 1.0) * ref["growth_s"], 3))
        else:
            p.update(mode=phase, delay=round(rng.uniform(0.0, 0.6) * args.pause, 3))
    elif in_save(i, args.in_save):
        p.update(mode="save", save=rng.randint(1, args.steps // args.save_every),
                 delay=round(rng.uniform(0.0, 0.6) * args.pause, 3))
    else:
        after = rng.randint(0, args.steps - 1)
        span = ref["startup_s"] if after == 0 else ref["step_s"]
        p.update(mode="time", after_step=after, delay=round(rng.uniform(0.0, 1.0) * span, 3))
    return p


def ok(r: dict) -> bool:
    return (r["killed"] and r["survived"] and r["bit_identical"] and r["log_exact"]
            and all(r.get(k, True) for k in ("growth_once", "same_winner", "no_partial")))


def trial(i: int, work: Path, data: dict, args, ref: dict, kind: str = "train",
          kinds: tuple[str, ...] = ("train",)) -> dict:
    p = plan(i, args, ref, kind, kinds)
    steps, _ = run_length(args, kind)
    out, log = work / f"trial{i:03d}", work / f"trial{i:03d}.log"
    shutil.rmtree(out, ignore_errors=True)
    log.unlink(missing_ok=True)
    r = dict(p, killed=False, in_save=False, in_phase=False, kill_step=None, resumed_from=None, redone=None,
             survived=False, bit_identical=False, log_exact=False, error=None)
    if kind != "train":
        r.update(growth_once=False, same_winner=False, no_partial=False)
    phase = p["mode"] if p["mode"] not in ("save", "time") else None
    pause = ({PAUSE_ENV: str(args.pause)} if p["mode"] == "save" else
             {fg.PAUSE_ENV: f"{phase}:{args.pause}"} if phase else None)
    t0 = time.time()
    proc = start(command(out, data, args, resume=False, kind=kind), log, pause=pause)
    # wait for the moment of the plan, looking up the ranks' pids meanwhile (a look-up takes tens of ms)
    pids, looked = {}, 0.0
    while proc.poll() is None and time.time() - t0 < RUN_TIMEOUT:
        if p["mode"] == "save" and marker_count(log) >= p["save"]:
            break
        if phase and marker_count(log, f"{fg.PAUSE_MARKER} {phase} ") >= 1:
            break
        if p["mode"] == "time" and (p["after_step"] == 0 or max(logged_steps(out), default=0) >= p["after_step"]):
            break
        if len(pids) < 2 and time.time() - looked > 0.5:
            pids, looked = rank_pids(proc), time.time()
        time.sleep(0.005)
    at = time.time()
    if proc.poll() is None:
        time.sleep(max(0.0, p["delay"] - (time.time() - at)))
    if proc.poll() is None:
        victim = pids.get(p["victim"]) or rank_pids(proc).get(p["victim"])
        try:
            os.kill(victim if victim else proc.pid, signal.SIGKILL)  # before the ranks exist: the launcher
        except ProcessLookupError:
            pass
        r["killed"], r["victim_pid"], r["kill_s"] = True, victim, round(time.time() - t0, 2)
        r["in_save"] = p["mode"] == "save" and time.time() - at < args.pause
        r["in_phase"] = phase is not None and time.time() - at < args.pause
        time.sleep(0.2)  # what the launcher would see: a rank gone; then the node's processes go with it
        kill_group(proc)
    else:
        r["error"] = f"the run ended (status {proc.returncode}) before the kill"
        kill_group(proc)
    r["kill_step"] = max(logged_steps(out), default=0)
    latest = out / "checkpoints" / "latest"
    r["latest_after_kill"] = latest.read_text().strip() if latest.is_file() else None
    r["tmp_left"] = sorted(x.name for x in (out / "checkpoints").glob("*.tmp")) if (out / "checkpoints").is_dir() \
        else []
    r["resumed_from"] = int(r["latest_after_kill"][4:]) if r["latest_after_kill"] else 0
    r["redone"] = r["kill_step"] - r["resumed_from"]
    if kind != "train":
        r.update(fg.after_kill(out))
    # the restart, as a requeued job runs it
    with open(log, "ab") as f:
        f.write(b"\n" + fg.RESTART + b"\n")
    proc = start(command(out, data, args, resume=True, kind=kind), log)
    try:
        proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        r["error"] = f"the restart did not finish in {RUN_TIMEOUT} s"
        return r
    kill_group(proc)  # its loader workers, if any were left
    if kind != "train":  # where it really went on from: the step of the first folder it resumed from
        facts = fg.restart_facts(log)
        r.update(resumed_from=facts["resumed_from"], redone=r["kill_step"] - facts["resumed_from"],
                 resumed=[f"{Path(f).relative_to(out) if Path(f).is_relative_to(out) else f}" for f, _ in
                          facts["resumed"]], growth_redone=facts["growth_redone"], search_redone=facts["search_redone"])
    if proc.returncode != 0:
        r["error"] = f"the restart failed (status {proc.returncode}): {tail(log, 1500)}"
        return r
    try:
        weights = final_weights(out, steps)
    except Exception as e:  # noqa: BLE001 - reported as the trial's failure
        r["error"] = f"the final checkpoint cannot be read: {e}"
        return r
    r["survived"] = True
    import torch
    ref_w = ref["weights"]
    diff = sorted(k for k in ref_w.keys() | weights.keys()
                  if k not in ref_w or k not in weights or not torch.equal(ref_w[k], weights[k]))
    r["bit_identical"] = not diff
    if diff:
        r["error"] = f"weights differ from the reference in {len(diff)} tensors, e.g. {diff[:3]}"
    got = losses(out)
    logged = logged_steps(out)
    once = logged == list(range(1, steps + 1))
    same = once and all(got[s] == ref["losses"][s] for s in logged)
    r["log_exact"] = once and same
    if not once:
        r["error"] = (r["error"] or "") + f" metrics.jsonl steps {logged}, not each of 1..{steps} once"
    elif not same:
        r["error"] = (r["error"] or "") + " metrics.jsonl losses differ from the reference's"
    if kind != "train":
        fg.check(r, out, log, ref["growth"])
    if not r["killed"] and not r["error"]:
        r["error"] = "no kill landed"
    return r


def describe(r: dict) -> str:
    where = (f"inside save {r['save']} (+{r['delay']} s into the pause)" if r["mode"] == "save"
             else f"after step {r['after_step']} +{r['delay']} s" if r["mode"] == "time"
             else f"inside phase {r['mode']} (+{r['delay']} s into the pause)")
    kind = "" if r.get("kind", "train") == "train" else f"[{r['kind']}] "
    growth = ""
    if kind:
        growth = (f", left {r.get('left') or 'nothing'}; resumed from {r.get('resumed') or 'nothing'}, growth redone "
                  f"{r.get('growth_redone')}, search redone {r.get('search_redone')}; growth once {r['growth_once']}, "
                  f"same winner {r['same_winner']}, no partial {r['no_partial']}")
    return (f"trial {r['trial']:3d}: {kind}kill rank {r['victim']} {where}: last step {r['kill_step']}, latest "
            f"{r['latest_after_kill']}, left {r['tmp_left'] or 'no .tmp'}; resumed from {r['resumed_from']}, "
            f"redone {r['redone']}; survived {r['survived']}, bit-identical {r['bit_identical']}, log exact "
            f"{r['log_exact']}{growth}: {'ok' if ok(r) else 'FAILED'}" + (f"\n    {r['error']}" if r["error"] else ""))


def summarize(results: list[dict]) -> dict:
    worst = max(results, key=lambda r: (r["redone"] or 0, bool(r.get("growth_redone") or r.get("search_redone"))),
                default=None)
    growing = [r for r in results if r.get("kind", "train") != "train"]
    return {"trials": len(results), "killed": sum(r["killed"] for r in results),
            "killed_inside_save": sum(r["in_save"] for r in results),
            "killed_inside_phase": sum(r.get("in_phase", False) for r in results),
            "survived": sum(r["survived"] for r in results),
            "bit_identical": sum(r["bit_identical"] for r in results),
            "log_exact": sum(r["log_exact"] for r in results),
            **{k: sum(r[k] for r in growing) for k in ("growth_once", "same_winner", "no_partial")},
            "growth_redone": sum(bool(r.get("growth_redone")) for r in growing),
            "search_redone": sum(bool(r.get("search_redone")) for r in growing),
            "worst_redone": worst["redone"] if worst else None, "worst_trial": worst["trial"] if worst else None,
            "failed": [r["trial"] for r in results if not ok(r)]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", type=int, nargs="*", default=None, help="run only these trial numbers (a replay)")
    p.add_argument("--kind", default="train", help="comma list of train, growth-live, growth-saved, search; trial i "
                                                   "is of the (i mod n)-th (tests/faults_growth.py)")
    p.add_argument("--in-save", type=float, default=0.3, help="share of the train trials killed inside a save")
    p.add_argument("--pause", type=float, default=3.0, help="seconds a save or a growth phase pauses")
    p.add_argument("--steps", type=int, default=8, help="train kind only (the growth kinds run 6)")
    p.add_argument("--save-every", type=int, default=2, help="train kind only (the growth kinds save every 2)")
    p.add_argument("--zero", type=int, choices=[1, 2], default=2)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "faults")
    p.add_argument("--shards", default=None, help="prepared shards (default: prepared under --work)")
    p.add_argument("--tokenizer", default=None)
    args = p.parse_args(argv)
    kinds = tuple(args.kind.split(","))
    unknown = [k for k in kinds if k != "train" and k not in fg.KINDS]
    if unknown:
        p.error(f"--kind: unknown {unknown}; choose from train, {', '.join(fg.KINDS)}")
    work = args.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = ({"shards": args.shards, "tokenizer": args.tokenizer} if args.shards and args.tokenizer
            else prepare_data(work))
    refs = {}
    for kind in kinds:
        refs[kind] = ref = reference(work, data, args, kind)
        steps, save_every = run_length(args, kind)
        print(f"faults: reference run{'' if kind == 'train' else ' ' + kind}: set-up {ref['startup_s']:.1f} s, "
              f"{ref['step_s']:.2f} s a step" + (f", growth step {ref['growth_s']:.1f} s" if "growth_s" in ref else "")
              + f"; {steps} steps, a save every {save_every}, ZeRO-{args.zero}, fp32, 2 ranks", flush=True)
    results = []
    with open(work / "results.jsonl", "a") as f:
        for i in (args.only if args.only is not None else range(args.trials)):
            kind = kinds[i % len(kinds)]
            r = trial(i, work, data, args, refs[kind], kind, kinds)
            r["wall_s"] = round(time.time() - t0, 1)
            results.append(r)
            f.write(json.dumps(r) + "\n")
            f.flush()
            print(describe(r), flush=True)
    s = summarize(results)
    growth = (f", growth once {s['growth_once']}, same winner {s['same_winner']}, no partial {s['no_partial']} "
              f"(of the growth trials; growth redone {s['growth_redone']}, search redone {s['search_redone']})"
              if kinds != ("train",) else "")
    print(f"faults: trials {s['trials']} (seed {args.seed}), killed {s['killed']} ({s['killed_inside_save']} inside "
          f"a save, {s['killed_inside_phase']} inside a growth phase), survivors {s['survived']} (resumed and "
          f"finished), bit-identical {s['bit_identical']}, log exact {s['log_exact']}{growth}, worst loss of work "
          f"{s['worst_redone']} steps redone (trial {s['worst_trial']}); failed: {s['failed'] or 'none'}; "
          f"{time.time() - t0:.0f} s", flush=True)
    return 0 if not s["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
