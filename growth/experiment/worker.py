"""`deepspeed --num_gpus N growth/experiment/worker.py --plan PLAN --out DIR --arms A,B [--smoke]`: train several
arms in one launch (a plan with `launch: inprocess`, the smoke plan). Each arm is exactly what
`pretrain/main.py` runs for it (its arguments from growth/experiment/arms.py, `GrowingRun(cfg, ds).train()`), one
after the other on the same ranks; between arms the engine and process groups are released as between growth
segments (pretrain/growth_loop.py close). Rank 0 writes each arm's train.json and forks; the ranks wait for it.
"""
import argparse
import gc
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file by the deepspeed launcher


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--plan", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--arms", required=True)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--local_rank", type=int, default=0)
    args = p.parse_args(argv)

    import torch.distributed as dist

    from growth.experiment import arms as A
    from growth.experiment import driver
    from growth.experiment.plan import load_plan
    from pretrain.checkpoint import check_out_dir
    from pretrain.config import load_run_config
    from pretrain.growth_loop import GrowingRun, close
    from pretrain.main import load_ds_config
    from pretrain.main import parse_args as main_parse

    out = Path(args.out)
    plan = load_plan(args.plan, args.smoke, driver.variables(out))
    rank = int(os.environ.get("RANK", "0"))
    for name in args.arms.split(","):
        arm = plan.arm(name)
        run = out / arm.name
        if (run / A.TRAIN_JSON).is_file():
            continue
        if rank == 0:
            driver.start_fork(out, arm)
        if dist.is_initialized():
            dist.barrier()
        margs, facts = A.main_args(plan, arm, out, driver.resume_of(out, arm))
        parsed = main_parse(margs)
        run_over = [o for o in parsed.overrides if not o.startswith("ds.")]
        ds_over = [o for o in parsed.overrides if o.startswith("ds.")]
        shown = shlex.join(["deepspeed", "--num_gpus", str(plan.nproc), "pretrain/main.py", *margs])
        shown += "   # run in one launch with the other arms (growth/experiment/worker.py)"
        if rank == 0:
            print(f"[worker] {arm.name}: {shown}", flush=True)
            driver.note_command(run, shown)
        t0 = time.time()
        cfg = load_run_config(parsed.config, run_over)
        check_out_dir(cfg.train.out_dir)
        growing = GrowingRun(cfg, load_ds_config(parsed.deepspeed_config, ds_over), resume=parsed.resume)
        growing.train()
        close(growing.trainer)
        del growing
        gc.collect()
        if rank == 0:
            driver.finish_training(plan, out, arm, shown, time.time() - t0, facts)
        dist.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
