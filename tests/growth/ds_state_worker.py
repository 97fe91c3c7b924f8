"""Load a grown universal checkpoint into a real DeepSpeed engine (ZeRO-2, every rank of
`deepspeed --num_gpus N`) and dump what the engine holds: the full fp32 master weight, Adam moments and step of
every parameter, gathered across the data-parallel partitions. Usage: ds_state_worker.py TAG_DIR OUT.pt"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import deepspeed  # noqa: E402
import torch  # noqa: E402
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state  # noqa: E402

from pretrain import checkpoint as ckpt  # noqa: E402
from pretrain.arch import Architecture  # noqa: E402
from pretrain.model import CLIP  # noqa: E402
from pretrain.optim import param_groups  # noqa: E402
from pretrain.parallel.groups import init_distributed  # noqa: E402


def main(tag_dir: Path, out: Path) -> None:
    init_distributed()  # gloo, without the /dev/shm-leaking shm op (pretrain/parallel/groups.py)
    arch = Architecture.from_dict(ckpt.read_client_state(tag_dir)["architecture"])
    model = CLIP(arch)
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 2},
              "zero_allow_untested_optimizer": True, "checkpoint": {"load_universal": True}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name, load_optimizer_states=True,
                           load_lr_scheduler_states=False, load_module_strict=False)
    dump = {}
    for name, p in engine.module.named_parameters():
        dump[name] = {"fp32": safe_get_full_fp32_param(p), "module": p.detach().clone(),
                      "exp_avg": safe_get_full_optimizer_state(p, "exp_avg"),
                      "exp_avg_sq": safe_get_full_optimizer_state(p, "exp_avg_sq")}
    steps = {float(s["step"]) for s in engine.optimizer.optimizer.state.values()}
    if torch.distributed.get_rank() == 0:
        torch.save({"params": dump, "steps": sorted(steps)}, out)


if __name__ == "__main__":
    main(Path(sys.argv[-2]), Path(sys.argv[-1]))  # the launcher may put --local_rank first
