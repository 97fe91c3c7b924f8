"""`train.optimizer=master_adamw`: AdamW that keeps the fp32 master weights itself, so DeepSpeed needs none.

Under ZeRO-1/2 in bf16, DeepSpeed's optimizer step cost 12.5 ms at ViT-B/16 on an H200 against fused AdamW's 2.6 ms
on the same model (docs/perf.md): its gradient buckets, its flat fp32 master copy, a norm computed per parameter and
read on the host when clipping is on. Here DeepSpeed runs ZeRO stage 0 and sees an fp32 model (no bf16 wrapper,
no clipping of its own): it all-reduces the gradients over data parallelism (skipped at dp = 1) and calls `step()`.
This optimizer then, per step and without a host sync:
  1. copies the model's gradients (bf16 or fp32) into one flat fp32 buffer per group (one multi-tensor copy);
  2. takes the global grad norm of those buffers on the device, and DeepSpeed ZeRO's clip factor
     max(1, (norm + 1e-6) / max_norm) as a tensor;
  3. runs torch's AdamW over the flat fp32 masters (fused on CUDA, the clip factor as its `grad_scale`; foreach on
     CPUs, the gradients multiplied by its reciprocal): one update per group;
  4. copies the masters into the model's parameters (one multi-tensor copy, bf16 rounding included).
The masters start from the model's weights as the model holds them (bf16-rounded in bf16 runs, as DeepSpeed's own
masters do). Gradients accumulate over train.grad_accum in the model's dtype, as under ZeRO-1/2 bf16.

Valid at ZeRO stage 0, parallel.tp = 1, parallel.pp = 1, fp32 or bf16; every rank keeps the full fp32 state
(no partitioning). Refused with one line elsewhere (`take_over`). Its state (masters + AdamW moments) is saved in the
DeepSpeed model-states file, which `ds_to_universal` cannot read: growth refuses it, and a run resumes only with the
optimizer it was saved with (`check_resume`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from .config import ConfigError

NAME = "master_adamw"
CLIP_EPS = 1e-6  # DeepSpeed ZeRO's: grads / max(1, (norm + 1e-6) / max_norm)


@dataclass(frozen=True)
class Precision:
    """What this optimizer takes over from the DeepSpeed config: the model's dtype and the clipping norm."""
    dtype: torch.dtype
    max_norm: float


def take_over(ds: dict, tp: int, pp: int, universal_resume: bool) -> tuple[dict, Precision]:
    """(the DeepSpeed config the engine gets, what this optimizer does instead): the config's bf16 and
    gradient_clipping move here, and DeepSpeed sees fp32 without clipping (no wrapper, no second clip). ConfigError
    naming the key where the optimizer is not valid."""
    def refuse(why: str) -> ConfigError:
        return ConfigError(f"train.optimizer={NAME} {why}; use train.optimizer=auto there")
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage != 0:
        raise refuse(f"keeps the fp32 master weights itself and needs ZeRO stage 0 (ds_configs/zero0-bf16.json or "
                     f"ds.zero_optimization.stage=0), this run has ZeRO-{stage}")
    if ds.get("fp16", {}).get("enabled"):
        raise refuse("has no loss scaling: train in bf16 (ds.bf16.enabled=true) or fp32, not ds.fp16")
    if pp > 1:
        raise refuse(f"needs parallel.pp=1 (the pipeline engine runs its own step), this run has pp={pp}")
    if tp > 1:
        raise refuse(f"takes the grad norm over whole parameters and needs parallel.tp=1, this run has tp={tp}")
    if universal_resume:
        raise refuse("cannot resume a universal checkpoint (it loads into DeepSpeed's ZeRO optimizer)")
    ds = json.loads(json.dumps(ds))
    bf16 = bool(ds.get("bf16", {}).get("enabled"))
    precision = Precision(torch.bfloat16 if bf16 else torch.float32, float(ds.get("gradient_clipping", 0.0)))
    ds["bf16"] = {"enabled": False}
    ds["gradient_clipping"] = 0.0
    return ds, precision


def check_resume(saved: str | None, wanted: str, where) -> None:
    """A checkpoint of this optimizer holds no ZeRO files, and a ZeRO checkpoint none of its state: refuse the
    switch in one line. `saved`: the checkpoint's train.optimizer (None: unknown, taken as a DeepSpeed one)."""
    if (saved == NAME) != (wanted == NAME):
        from .checkpoint import CheckpointError
        raise CheckpointError(f"{where} was trained with train.optimizer={saved or 'auto'}, whose optimizer state "
                              f"train.optimizer={wanted} cannot load; resume with train.optimizer={saved or 'auto'}")


def cast_parameters(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The parameters (not the buffers) in `dtype`, in place, as DeepSpeed's bf16 engine casts them."""
    for p in model.parameters():
        p.data = p.data.to(dtype)
    return model


class MasterAdamW(torch.optim.Optimizer):
    """AdamW over flat fp32 master copies of the groups' parameters, with global-norm clipping (max_norm > 0).
    The param groups hold the model's parameters (the lr schedule and DeepSpeed read and set their lr); the
    masters, their gradients and the AdamW state live in one flat fp32 buffer per group. `_global_grad_norm`
    (the norm before clipping, a device tensor) is what DeepSpeed's `get_global_grad_norm` returns."""

    def __init__(self, groups: list[dict], lr: float, betas, eps: float, max_norm: float = 0.0,
                 fused: bool | None = None):
        super().__init__(groups, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=0.0))
        self.max_norm = max_norm
        device = self.param_groups[0]["params"][0].device
        self.fused = device.type == "cuda" if fused is None else fused
        self.masters, self._master_views, self._grad_views = [], [], []
        with torch.no_grad():
            for g in self.param_groups:
                master = torch.cat([p.detach().reshape(-1).float() for p in g["params"]])
                master.grad = torch.zeros_like(master)
                self.masters.append(master)
                self._master_views.append(_views(master, g["params"]))
                self._grad_views.append(_views(master.grad, g["params"]))
        self.inner = torch.optim.AdamW([{"params": [m]} for m in self.masters], lr=lr, betas=tuple(betas), eps=eps,
                                       **({"fused": True} if self.fused else {"foreach": True}))
        self._global_grad_norm = None

    @torch.no_grad()
    def step(self, closure=None):
        params, grads, views = [], [], []
        for g, gv in zip(self.param_groups, self._grad_views):
            for p, v in zip(g["params"], gv):
                if p.grad is None:
                    v.zero_()  # a parameter the loss did not reach: a zero gradient (ZeRO's flat buffers agree)
                else:
                    grads.append(p.grad)
                    views.append(v)
                params.append(p)
        torch._foreach_copy_(views, grads)
        flat_grads = [m.grad for m in self.masters]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(flat_grads)))
        self._global_grad_norm = norm
        self.inner.grad_scale = None
        if self.max_norm > 0:
            scale = torch.clamp((norm + CLIP_EPS) / self.max_norm, min=1.0)
            if self.fused:
                self.inner.grad_scale = scale  # the fused kernel divides the gradients by it
            else:
                torch._foreach_mul_(flat_grads, torch.reciprocal(scale))
        for outer, inner in zip(self.param_groups, self.inner.param_groups):
            inner.update({k: outer[k] for k in ("lr", "betas", "eps", "weight_decay")})
        self.inner.step()
        torch._foreach_copy_(params, [v for vs in self._master_views for v in vs])
        return None

    def state_dict(self) -> dict:
        """torch's layout of the param groups, plus the fp32 masters and the inner AdamW's state (plain tensors and
        containers: the checkpoint check loads it with weights_only=True)."""
        sd = super().state_dict()
        sd[NAME] = {"masters": [m.detach() for m in self.masters], "adam": self.inner.state_dict()}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        mine = state_dict.get(NAME) if isinstance(state_dict, dict) else None
        if mine is None:
            raise ValueError(f"not a {NAME} optimizer state (a checkpoint of another train.optimizer?)")
        saved = [tuple(m.shape) for m in mine["masters"]]
        if saved != [tuple(m.shape) for m in self.masters]:
            raise ValueError(f"{NAME} state holds masters of {saved} elements, this model's groups have "
                             f"{[tuple(m.shape) for m in self.masters]}")
        super().load_state_dict({"state": {}, "param_groups": state_dict["param_groups"]})
        with torch.no_grad():
            for m, s in zip(self.masters, mine["masters"]):
                m.copy_(s)
        self.inner.load_state_dict(mine["adam"])  # its params are the fp32 masters: the moments stay fp32


def _views(flat: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [v.view(p.shape) for v, p in zip(flat.split([p.numel() for p in params]), params)]
