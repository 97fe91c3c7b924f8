"""AdamW parameter groups and the warmup + cosine schedule."""
import math

import torch


def no_decay(name: str, p: torch.Tensor) -> bool:
    """Norms, biases, embeddings (token, positional, class) and logit_scale get no weight decay."""
    return (p.ndim < 2 or "ln_" in name or name.endswith(".bias") or "embedding" in name
            or name == "logit_scale")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (rest if no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def cosine_with_warmup(optimizer, warmup: int, total: int, lr: float, min_lr: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return (min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))) / lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
