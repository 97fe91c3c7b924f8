"""AdamW parameter groups and the optimizer (fused on GPUs); the lr schedule is in schedule.py."""
import torch


def no_decay(name: str, p: torch.Tensor) -> bool:
    """Norms, biases, embeddings (token, positional, class) and logit_scale get no weight decay."""
    return (p.ndim < 2 or "ln_" in name or name.endswith(".bias") or "embedding" in name
            or name == "logit_scale")


ALIGN = 8  # elements: a parameter whose size is a multiple of this keeps 16-byte alignment in a flat 16-bit buffer


def named_groups(model: torch.nn.Module) -> list[list[tuple[str, torch.Tensor]]]:
    """(name, parameter) of the weight-decay group and of the no-decay group, in the order the optimizer (and so
    DeepSpeed's flat ZeRO buffers and checkpoints) holds them: in each group the parameters whose size is a multiple
    of ALIGN first, the others (logit_scale) last. ZeRO-1/2 turn each module parameter into a view at its offset in
    one flat buffer per group, so a 1-element parameter early in a group left every later one 2 bytes off a 16-byte
    boundary; cuBLAS then falls back to slow kernels for every bias and the LayerNorms ran slower too (measured on
    an H200, ViT-B/16: docs/perf.md)."""
    groups: list[list] = [[], []]
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[no_decay(name, p)].append((name, p))
    return [sorted(g, key=lambda np_: np_[1].numel() % ALIGN != 0) for g in groups]  # stable: order kept otherwise


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, rest = named_groups(model)
    return [{"params": [p for _, p in decay], "weight_decay": weight_decay},
            {"params": [p for _, p in rest], "weight_decay": 0.0}]


OPTIMIZERS = ("auto", "torch", "torch_fused", "deepspeed_fused", "master_adamw")


def optimizer_kind(name: str, device: torch.device) -> str:
    """auto: torch AdamW(fused=True) on CUDA (one multi-tensor kernel per step, no build), torch AdamW (foreach)
    elsewhere. master_adamw (pretrain/master_adamw.py): AdamW keeping its own fp32 masters, at ZeRO-0 (fused on
    CUDA, foreach elsewhere). DeepSpeed's FusedAdam is the other fused choice; it JIT-builds a CUDA op on first
    use (on the H200 image set TORCH_CUDA_ARCH_LIST=9.0: its preset 9.0a breaks that build)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    if name == "auto":
        return "torch_fused" if device.type == "cuda" else "torch"
    if name not in ("torch", "master_adamw") and device.type != "cuda":
        raise ValueError(f"train.optimizer={name} needs CUDA; this run is on {device.type}")
    return name


def build_optimizer(model: torch.nn.Module, kind: str, lr: float, betas, eps: float, weight_decay: float,
                    max_norm: float = 0.0):
    """AdamW over `param_groups` (the same groups and hyper-parameters whichever implementation runs). max_norm:
    master_adamw's own gradient clipping (DeepSpeed clips for the others)."""
    groups = param_groups(model, weight_decay)
    if kind == "master_adamw":
        from .master_adamw import MasterAdamW
        return MasterAdamW(groups, lr=lr, betas=betas, eps=eps, max_norm=max_norm)
    if kind == "deepspeed_fused":
        from deepspeed.ops.adam import FusedAdam
        return FusedAdam(groups, lr=lr, betas=betas, eps=eps, adam_w_mode=True)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **({"fused": True} if kind == "torch_fused" else {}))

