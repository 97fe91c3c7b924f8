"""Benchmark: the pause a written growth puts into training, at ViT-B/16 size on 2 CPU ranks, beside
`ds_to_universal` alone on the same run's checkpoint (issue 19, item 5). `make bench-growth` or
`python -m growth.bench [--model configs/models/vit-b-16.yaml] [--move "vision.layers+=2"] [--out DIR]`.

Two real 2-rank runs (`deepspeed pretrain/main.py`, ZeRO-2, fp32 on the CPU, micro-batch 1 per rank) of the model
on the synthetic stream (`make data-synthetic`: its shards and its 1,024-id tokenizer, so the text vocabulary is
1,024, not OpenCLIP's 49,408; both sides of the ratio read the same model). Each trains 4 steps, saves at step 2
and grows by `--move` after step 3:
  - live (the default, growth/live.py): from the running engine, no save before the growth;
  - saved (growth.live=false): a save at step 3, ds_to_universal in a subprocess, growth from it (growth/hook.py).
The pause is the trainer's own record (OUT/growth_pauses.jsonl): from the end of step 3 to the start of step 4,
the engine restart and the resharding load included. ds_to_universal alone is timed as a user runs it
(interpreter start included) on the live run's step-2 checkpoint (the same model, layout and ZeRO files) right
after the live run, and once more at the end; the ratio uses the first, the second shows the machine's drift. The
goal is a live pause <= 1.0x ds_to_universal alone. Writes OUT/summary.json (pause_s, ds_to_universal_s, ratio,
and the rest) and prints a markdown row for docs/perf.md; exit 1 when the goal is missed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.0
STEPS, SAVE_AT, GROW_AT = 4, 2, 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "cpu")
    return f"{cpu}, {os.cpu_count()} cores visible (shared), {platform.system()}"


def run(out: Path, args, *extra: str) -> float:
    """One 2-rank training run that grows after step GROW_AT; returns its wall time."""
    config = out.parent / f"{out.name}.yaml"
    config.write_text(json.dumps({"model": str(Path(args.model).resolve())}))
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           "pretrain/main.py", "--config", str(config), "--deepspeed_config", "ds_configs/zero2.json",
           f"data.shards={args.shards}", f"data.tokenizer={args.tokenizer}", f"train.out_dir={out}",
           "model.text.vocab=1024", f"train.steps={STEPS}", f"train.save_every={SAVE_AT}", "train.micro_batch=1",
           "train.log_every=1", "train.warmup=1", "data.workers=1", "data.shuffle_buffer=10",
           f"growth.at_steps=[{GROW_AT}]", f'growth.moves=["{args.move}"]', *extra]
    start = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed; see {out.parent / f'{out.name}.log'}")
    return time.perf_counter() - start


def to_universal(tag: Path, dst: Path) -> float:
    """ds_to_universal as a user runs it (interpreter start included); its wall time."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag),
                           "--output_folder", str(dst / tag.name)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"ds_to_universal failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def pause_of(out: Path) -> dict:
    records = [json.loads(line) for line in (out / "growth_pauses.jsonl").read_text().splitlines()]
    if len(records) != 1 or records[0]["step"] != GROW_AT:
        raise SystemExit(f"{out / 'growth_pauses.jsonl'}: expected one growth pause after step {GROW_AT}")
    return records[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="configs/models/vit-b-16.yaml")
    p.add_argument("--move", default="vision.layers+=2")
    p.add_argument("--shards", default="data/shards/synthetic-s2-train")
    p.add_argument("--tokenizer", default="data/tokenizer-synthetic/tokenizer.model")
    p.add_argument("--out", default="runs/bench-growth", help="results folder (replaced)")
    p.add_argument("--keep", action="store_true", help="keep the runs' checkpoints")
    args = p.parse_args(argv)
    for f in (args.shards, args.tokenizer):
        if not Path(f).exists():
            raise SystemExit(f"{f}: missing; run make data-synthetic")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    print(f"live growth run ({args.model}, {args.move!r}) ...", flush=True)
    live_wall = run(out / "live", args)
    tag = out / "live" / "checkpoints" / f"step{SAVE_AT:08d}"
    print(f"ds_to_universal alone on {tag} ...", flush=True)
    convert = to_universal(tag, out / "universal" / "first")
    print("growth through the saved checkpoint (growth.live=false) ...", flush=True)
    saved_wall = run(out / "saved", args, "growth.live=false")
    print("ds_to_universal alone again (the machine's load may have changed) ...", flush=True)
    again = to_universal(tag, out / "universal" / "again")
    live, saved = pause_of(out / "live"), pause_of(out / "saved")
    size = sum(f.stat().st_size for f in tag.rglob("*") if f.is_file())
    summary = {"date": str(datetime.date.today()), "machine": machine(), "model": Path(args.model).stem,
               "move": args.move, "ranks": 2, "zero": 2, "checkpoint_bytes": size,
               "pause_s": live["pause_s"], "ds_to_universal_s": round(convert, 3),
               "ds_to_universal_again_s": round(again, 3),
               "ratio": round(live["pause_s"] / convert, 3), "target_ratio": TARGET_RATIO,
               "saved_path_pause_s": saved["pause_s"], "saved_path_ratio": round(saved["pause_s"] / convert, 3),
               "live": live, "saved": saved, "run_wall_s": {"live": round(live_wall, 1), "saved": round(saved_wall, 1)}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print("\n| date | machine | model, move | checkpoint | ds_to_universal | pause, live | ratio | pause, saved path |"
          "\n|---|---|---|---:|---:|---:|---:|---:|")
    print(f"| {summary['date']} | {summary['machine']} | {summary['model']}, `{args.move}`, 2 ranks ZeRO-2 | "
          f"{size / 1e9:.2f} GB | {convert:.1f} s ({again:.1f} s at the end) | {live['pause_s']:.1f} s | "
          f"{summary['ratio']:.2f} | "
          f"{saved['pause_s']:.1f} s ({summary['saved_path_ratio']:.2f}) |")
    if not args.keep:
        for name in ("live", "saved", "universal"):
            for sub in ("checkpoints", "grown", "universal"):
                shutil.rmtree(out / name / sub, ignore_errors=True)
            if name == "universal":
                shutil.rmtree(out / name, ignore_errors=True)
    return 0 if summary["ratio"] <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
