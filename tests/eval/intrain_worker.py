"""One rank of the in-training eval test, launched by torchrun with 2 processes. Two engines in turn, as the
trainer builds them: ZeRO-3, then tensor parallel (tp=2, ZeRO-1). For each: the eval hook on every rank (with
a task whose data only rank 0 has), then a training step, which would hang if the hook had left the ranks out
of step. Rank r writes {engine: results} to OUT.rank<r>."""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # torchrun runs a file

import deepspeed  # noqa: E402
import deepspeed.comm as dist  # noqa: E402
import torch  # noqa: E402

from eval import intrain  # noqa: E402
from eval.load import load_checkpoint  # noqa: E402
from pretrain.model import CLIP  # noqa: E402
from pretrain.parallel.groups import init_distributed, init_groups  # noqa: E402
from pretrain.parallel.layout import Layout  # noqa: E402
from pretrain.parallel.tensor import apply_tensor_parallel  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--checkpoint")
p.add_argument("--tasks")
p.add_argument("--limit", type=int)
p.add_argument("--out")
p.add_argument("--data-dirs", help="one per rank")
args = p.parse_args()

init_distributed()  # gloo, without the /dev/shm-leaking shm op (pretrain/parallel/groups.py)
rank, world = dist.get_rank(), dist.get_world_size()
loaded = load_checkpoint(args.checkpoint)


def fresh_copy() -> CLIP:
    model = CLIP(loaded.arch)
    model.load_state_dict(loaded.model.state_dict())
    return model


def evaluate_then_train(model, stage: int, mpu=None, tp_group=None) -> dict:
    config = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": stage},
              "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=config,
                                      mpu=mpu)
    single = intrain.single_device_model(engine, tp_group)
    results = intrain.run(single, loaded.tokenizer, loaded.transform, args.tasks.split(","), args.limit, rank, world,
                          batch_size=64, data_dir=Path(args.data_dirs.split(",")[rank]))
    del single
    size = loaded.arch.vision.image_size
    torch.manual_seed(0)  # the same batch on both ranks: at tp=2 they are one tensor-parallel group
    image_f, text_f, scale = engine(torch.randn(2, 3, size, size), loaded.tokenizer(["a bag", "a coat"]))
    engine.backward((image_f @ text_f.T).sum() * scale)
    engine.step()
    return results


out = {"zero3": evaluate_then_train(fresh_copy(), stage=3)}
mpu, _ = init_groups(Layout.for_world(world, 2, 1))
out["tp2"] = evaluate_then_train(apply_tensor_parallel(fresh_copy(), 2), stage=1, mpu=mpu,
                                 tp_group=mpu.get_tensor_model_parallel_group())
Path(f"{args.out}.rank{rank}").write_text(json.dumps(out))
