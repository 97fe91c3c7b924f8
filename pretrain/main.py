"""Entry point: `deepspeed pretrain/main.py --config configs/demo.yaml [--deepspeed_config ds_configs/zero2.json]
[--resume latest|PATH] [section.key=value ...] [ds.key=value ...]`.

`growth.at_steps=[N] growth.moves=[MOVE]` grows the model in-process after step N (pretrain/growth_loop.py).

`ds.`-prefixed overrides edit the DeepSpeed config (e.g. ds.zero_optimization.stage=3, ds.bf16.enabled=true).
Config, checkpoint and layout errors print one clear line and exit with status 2 before any training: among
them a train.out_dir that cannot be written (checked first, before DeepSpeed starts) and a `--resume` checkpoint
with a file that weights_only=True refuses or cannot read (pretrain/checkpoint.py check_files). A save that
fails during training (a full disk) also ends with one line and status 2; `latest` names the last complete save.
SIGUSR1/SIGTERM (preemption) end the run after the current step with a checkpoint and status 75 (EX_TEMPFAIL);
slurm/train.sbatch turns that into `scontrol requeue`, and the requeued job resumes with `--resume latest`.
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `deepspeed pretrain/main.py` runs a file

from pretrain.arch import ArchitectureError  # noqa: E402
from pretrain.checkpoint import CheckpointError, check_out_dir  # noqa: E402
from pretrain.config import ConfigError, _parse_value, _set, load_run_config  # noqa: E402
from pretrain.data.tokenizer import TokenizerError  # noqa: E402
from pretrain.init_from import InitError  # noqa: E402
from pretrain.parallel.layout import LayoutError  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="run config YAML (configs/*.yaml)")
    p.add_argument("--deepspeed_config", default="ds_configs/zero2.json", help="DeepSpeed JSON config")
    p.add_argument("--resume", default=None, help="'latest' (this run's out_dir) or a checkpoint path")
    p.add_argument("--kernels", choices=["auto", "triton", "torch"], default=None,
                   help="attention + loss kernels (train.kernels); auto: per shape, the faster in kernels/records.json "
                        "for this GPU (SDPA + torch loss without a record, and on CPUs)")
    p.add_argument("--tp", type=int, default=None, help="tensor-parallel size (parallel.tp)")
    p.add_argument("--pp", type=int, default=None, help="pipeline stages (parallel.pp)")
    p.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)), help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.steps=100, ds.bf16.enabled=true")
    return p.parse_intermixed_args(argv)


def load_ds_config(path: str, overrides: list[str]) -> dict:
    f = Path(path)
    if not f.is_file():
        raise ConfigError(f"--deepspeed_config {path}: no such file")
    try:
        ds = json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested past Python's recursion limit
        raise ConfigError(f"{path}: invalid JSON ({e.__class__.__name__}: {str(e)[:200]})") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"{path}: a DeepSpeed config is a JSON object, got {type(ds).__name__}")
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like ds.key=value")
        key, value = ov[len("ds."):].split("=", 1)
        _set(ds, key, _parse_value(value, f"override {ov!r}"), f"override {ov!r}")
    return ds


def main(argv=None) -> int:
    args = parse_args(argv)
    from pretrain.trainer import install_stop_handlers, restore_stop_handlers
    handlers = install_stop_handlers()  # SIGUSR1/SIGTERM: save at the end of the step, exit EXIT_PREEMPTED (75)
    try:
        return _main(args)
    finally:
        restore_stop_handlers(handlers)


def leave_process_group() -> None:
    """A rank that stops on an error after the process group started tears it down before it exits: left to the
    interpreter's exit, gloo's threads could abort the process ("terminate called without an active exception",
    status -6) instead of the clean status 2."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort on the way out; the error line is already printed
            pass


def _main(args) -> int:
    ds_over = [o for o in args.overrides if o.startswith("ds.")]
    run_over = [o for o in args.overrides if not o.startswith("ds.")]
    if args.kernels:
        run_over.append(f"train.kernels={args.kernels}")
    run_over += [f"parallel.{k}={v}" for k, v in (("tp", args.tp), ("pp", args.pp)) if v is not None]
    try:
        cfg = load_run_config(args.config, run_over)
        ds_config = load_ds_config(args.deepspeed_config, ds_over)
        from pretrain.ds_check import check_ds_config
        check_ds_config(ds_config, cfg, args.deepspeed_config)
        check_out_dir(cfg.train.out_dir)
        from pretrain.growth_loop import GrowingRun
        run = GrowingRun(cfg, ds_config, resume=args.resume)
    except (ConfigError, ArchitectureError, CheckpointError, LayoutError, FileNotFoundError, TokenizerError,
            InitError) as e:
        print(f"error: {e}", file=sys.stderr)
        leave_process_group()
        return 2
    from pretrain.data.pipeline import NoUsableData
    from pretrain.trainer import EXIT_PREEMPTED, DivergedError
    try:
        run.train()
    except (CheckpointError, DivergedError, TokenizerError, NoUsableData) as e:  # a failed save (no space left,
        # ...), a NaN loss, a tokenizer file replaced by garbage under a running job, data with no usable sample: one
        # line; the launcher stops the rest. A loader worker's error comes back wrapped with its traceback: its
        # last line is the message
        text = str(e).strip().splitlines()[-1] if str(e).strip() else e.__class__.__name__
        print(f"\nerror: {text}", file=sys.stderr, flush=True)  # on a line of its own, after the progress bar
        leave_process_group()
        return 2
    return EXIT_PREEMPTED if run.trainer is not None and run.trainer.preempted else 0


if __name__ == "__main__":
    sys.exit(main())
