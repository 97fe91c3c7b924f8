"""`python -m tests.fuzz`: mutate every input a user hands GrowCLIP and check how each case ends.

    python -m tests.fuzz --cases 600 --seed 0 [--kinds config,ds] [--only 17] [--work runs/fuzz] [--json F]

Case i of seed S is drawn from random.Random(f"{S}:{i}"), kind by kind in turn, so `--only i` replays it. Each
case gets the folder WORK/cases/<i>/ (kept for a finding, removed otherwise). Exit status 0 when no case found
anything. tests/fuzz/README.md lists the kinds and the verdicts.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from . import fixtures
from .harness import run_case
from .kinds import KINDS


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", type=int, nargs="*", default=None, help="replay these case numbers")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma list of {', '.join(KINDS)}")
    p.add_argument("--work", type=Path, default=Path("runs/fuzz"))
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a case may take")
    p.add_argument("--json", type=Path, default=None, help="results, one record per case (default WORK/results.json)")
    p.add_argument("-v", "--verbose", action="store_true", help="a line per case")
    return p.parse_args(argv)


def plan(kinds: list[str], seed: int, index: int) -> tuple[str, random.Random]:
    return kinds[index % len(kinds)], random.Random(f"{seed}:{index}")


def run(cases: list[int], kinds: list[str], seed: int, work: Path, timeout: float, verbose: bool = False) -> list:
    logging.disable(logging.WARNING)  # the loader's warnings per bad shard; skips are counted, not logged
    work = work.absolute()
    fx = fixtures.tiny_data(work)
    need_ckpt = any(k in ("checkpoint", "eval_task") for k in kinds)
    if need_ckpt:
        fx["run"] = str(fixtures.checkpoint(work))
    fx["watch"] = [Path(fx["shards"]).parent.parent] + ([Path(fx["run"]).parent] if need_ckpt else [])
    records = []
    for i in cases:
        kind, rng = plan(kinds, seed, i)
        root = work / "cases" / str(i)
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        case = KINDS[kind](rng, root, fx)
        case.watch = fx["watch"]
        result = run_case(case, root, timeout)
        records.append({"case": i, "kind": kind, "what": case.what, "expect": case.expect, **vars(result)})
        if verbose or result.verdict != "ok":
            print(f"{i:5d} {kind:10s} {result.verdict:22s} {result.outcome:9s} {result.seconds:6.2f}s {case.what}"
                  f"  {result.detail[:160]}", flush=True)
        if result.verdict == "ok":
            shutil.rmtree(root, ignore_errors=True)
    return records


def table(records: list) -> str:
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        by_kind[r["kind"]]["cases"] += 1
        by_kind[r["kind"]][r["outcome"]] += 1
        by_kind[r["kind"]]["findings"] += r["verdict"] != "ok"
    cols = ["cases", "error", "accepted", "ran", "skips", "clean", "findings"]
    lines = ["| kind | " + " | ".join(cols) + " | seconds |", "|---|" + "---:|" * (len(cols) + 1)]
    for kind, c in by_kind.items():
        secs = sum(r["seconds"] for r in records if r["kind"] == kind)
        lines.append(f"| {kind} | " + " | ".join(str(c[k]) for k in cols) + f" | {secs:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        print(f"error: unknown kind(s) {unknown}; known: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    start = time.monotonic()
    cases = args.only if args.only is not None else list(range(args.cases))
    records = run(cases, kinds, args.seed, args.work, args.timeout, args.verbose)
    print(table(records))
    findings = [r for r in records if r["verdict"] != "ok"]
    print(f"{len(records)} cases, {len(findings)} findings, {time.monotonic() - start:.0f} s")
    out = args.json or args.work / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seed": args.seed, "kinds": kinds, "records": records}, indent=1))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
