"""Several Trainers one after another in one process (WORLD_SIZE=1, gloo), each a few steps of the same run
config with different hot-path settings; dumps each run's per-step records and final weights.

    trainer_worker.py OUT.pt DATA_SHARDS TOKENIZER NAME:override,override... [NAME:...]

Used by tests/train/test_hot_path.py (one process start and one DeepSpeed import for all of them)."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pretrain.config import load_run_config  # noqa: E402
from pretrain.growth_loop import close  # noqa: E402
from pretrain.trainer import Trainer  # noqa: E402
from tests.conftest import SMALL_MODEL  # noqa: E402


def main(out: str, shards: str, tokenizer: str, *runs: str) -> None:
    os.chdir(ROOT)
    result = {}
    for spec in runs:
        name, _, overrides = spec.partition(":")
        cfg = load_run_config("configs/demo.yaml", [
            f"data.shards={shards}", f"data.tokenizer={tokenizer}", f"train.out_dir={Path(out).parent / name}",
            "train.micro_batch=16", "train.log_every=2", "train.warmup=2", "data.shuffle_buffer=200",
            "data.workers=0", *SMALL_MODEL, *[o for o in overrides.split(",") if o]])
        trainer = Trainer(cfg, {"zero_optimization": {"stage": 2}, "gradient_clipping": 1.0})
        records = trainer.train()
        weights = {n: p.detach().float().clone() for n, p in trainer.engine.module.named_parameters()}
        result[name] = {"records": records, "weights": weights, "compiled": trainer.compiled,
                        "kernels": trainer.kernels, "ema_t": trainer.ema.t}
        close(trainer)
        del trainer
        torch._dynamo.reset()
    torch.save(result, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
