"""Worker of test_loss_dtype (one process, one rank): what dtype the trainer's loss receives in an fp32 and a bf16
run, and whether train.fp8=true is refused on this machine. Prints one JSON line."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import pretrain.loss as loss_module  # noqa: E402
from pretrain.config import ConfigError, load_run_config  # noqa: E402
from pretrain.growth_loop import close  # noqa: E402
from pretrain.trainer import Trainer  # noqa: E402
from tests.conftest import SMALL_MODEL  # noqa: E402

shards, tokenizer, out = sys.argv[1:4]
seen = []
torch_loss = loss_module.clip_loss_torch


def recording_loss(image_local, text_local, image_all, text_all, scale, offset=0):
    """The torch loss, noting the dtypes it is called with: the innermost point the features reach."""
    seen.append([str(t.dtype) for t in (image_local, text_local, image_all, text_all, scale)])
    return torch_loss(image_local, text_local, image_all, text_all, scale, offset)


loss_module.clip_loss_torch = recording_loss


def config(name, *extra):
    return load_run_config("configs/demo.yaml", [f"data.shards={shards}", f"data.tokenizer={tokenizer}",
                                                 f"train.out_dir={out}/{name}", "train.micro_batch=8",
                                                 "train.steps=1", "data.workers=0", "data.shuffle_buffer=50",
                                                 "train.kernels=torch", "train.compile=off", *SMALL_MODEL, *extra])


result = {}
for name, bf16 in (("fp32", False), ("bf16", True)):
    seen.clear()
    trainer = Trainer(config(name), {"zero_optimization": {"stage": 0}, "bf16": {"enabled": bf16}})
    loss = trainer.train_step(iter(trainer.loader))["loss"]
    result[name] = {"seen": list(seen), "loss_dtype": str(loss.dtype), "loss": float(loss)}
    close(trainer)
try:
    Trainer(config("fp8", "train.fp8=true"), {"zero_optimization": {"stage": 0}})
    result["fp8"] = "accepted"
except ConfigError as e:
    result["fp8"] = str(e)
print(json.dumps(result))
