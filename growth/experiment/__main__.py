"""python -m growth.experiment --plan PLAN.yaml --out DIR [--smoke] [--arms A-s0,B-s0] [--dry-run] [--device cuda]
python -m growth.experiment --report DIR [--md docs/results/growclip-offline.md]

Runs (or resumes) an experiment plan, arm by arm, into run folders under DIR; or writes the report of DIR.
See growth/experiment/README.md.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m growth.experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", help="experiment plan (configs/experiments/*.yaml)")
    p.add_argument("--out", help="experiment folder: one run folder per arm")
    p.add_argument("--smoke", action="store_true", help="the plan's smoke section: every arm for a few steps")
    p.add_argument("--arms", help="comma list of run folders (NAME-sSEED) to run; default all")
    p.add_argument("--dry-run", action="store_true", help="list the arms, their order and dependencies")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the held-out curves and evals run; cuda needs a GPU (a GPU plan: "
                        "configs/experiments/growth-pays-gpu.yaml)")
    p.add_argument("--report", metavar="DIR", help="write the report of an experiment folder")
    p.add_argument("--md", help="report path (default docs/results/<plan name>.md; PNGs in a folder beside it)")
    args = p.parse_args(argv)
    if bool(args.report) == bool(args.plan):
        p.error("give --plan PLAN --out DIR to run, or --report DIR")
    if args.plan and not args.out:
        p.error("--plan needs --out DIR")
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from .plan import PlanError
    try:
        if args.report:
            from .report import write_report
            md = write_report(Path(args.report), Path(args.md) if args.md else None)
            print(f"report: {md}")
            return 0
        from .driver import run_plan
        if args.dry_run:
            from .plan import load_plan
            plan = load_plan(args.plan, args.smoke)
            for a in plan.arms:
                dep = f" (after {a.needs}: {'fork' if a.fork else 'ref'})" if a.needs else ""
                print(f"{a.name:24s} {a.kind:12s} {a.group:9s} {shlex.join(a.overrides)}{dep}")
            return 0
        only = args.arms.split(",") if args.arms else None
        finished = run_plan(args.plan, args.out, args.smoke, only, ["python", "-m", "growth.experiment", *argv],
                            device=args.device)
        print(f"[experiment] {len(finished)} arm(s) finished in this invocation; report: "
              f"python -m growth.experiment --report {args.out}")
    except (PlanError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
