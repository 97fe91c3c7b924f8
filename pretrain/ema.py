"""EMA of the weights: the momentum model that PIM inherits from at a growth step.

    θ̄ ← μ_t·θ̄ + (1−μ_t)·θ after every optimizer step,  μ_t = min(μ, (1 + t) / (10 + t))  (warm-up, as timm's
    ModelEmaV2/V3), t = the number of updates θ̄ has taken before this one; the first update copies θ.

Without the warm-up a constant μ = 0.999 started from the first weights is still ~0.999^t of those (random)
weights after t steps: 90% after 100 steps, 37% after 1,000. With it the EMA averages roughly the last t/9 steps
early in a run and becomes the μ-EMA once (1 + t) / (10 + t) > μ (t > 8,990 for μ = 0.999), so a growth after a
few hundred steps inherits recent weights (tests/train/test_ema.py measures it). `warmup=False` gives the constant μ.

Where it lives (no gather per step). Each rank keeps, in fp32, the EMA of exactly the weights it holds: its own
tensor-parallel shard of its pipeline stage's parameters, and under ZeRO-3 only its partition of each of them
(`ds_tensor`). The update is two multi-tensor (`torch._foreach_*`) calls over tensors bound once (`bind`), with no
communication and no per-parameter Python. The averaged weights are the module's (the engine's bf16/fp16 copy in
16-bit runs, as the EMA always was; fp32 runs average the fp32 weights). A checkpoint holds the full EMA with
canonical names: the trainer gathers it at save time (ZeRO-3 partitions over data parallelism, then
`parallel.pipeline.full_state` over TP and PP), and splits it again at resume. For PIM nothing changes: the saved
EMA is the same full, canonical-named tensor dict as before (`client["ema"]["shadow"]`), now with `t` beside it.

Checkpoint state: {"decay": μ, "shadow": {name: full fp32 tensor}, "t": updates taken}. A checkpoint
written before the warm-up existed has no "t": it loads with t = the checkpoint's step (the number of updates its
EMA took, one per step), i.e. as if the warm-up had always been on; its shadow is used as saved.
"""
from __future__ import annotations

import torch


class EMA:
    def __init__(self, decay: float, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.t = 0                                      # updates taken (the first one copies)
        self.shadow: dict[str, torch.Tensor] = {}       # this rank's pieces, fp32, by canonical name
        self._names: list[str] = []
        self._sources: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] | None = None

    def decay_at(self, t: int) -> float:
        """μ_t of the update that follows t updates."""
        return min(self.decay, (1 + t) / (10 + t)) if self.warmup else self.decay

    def bind(self, named_tensors) -> None:
        """The (name, tensor) pairs this rank averages, bound once: tensors the optimizer updates in place (the
        module's parameters, or their ZeRO-3 partitions). A shadow loaded before must hold exactly these names."""
        pairs = list(named_tensors)
        self._names = [n for n, _ in pairs]
        self._sources = [t for _, t in pairs]
        self._targets = None
        if self.shadow and set(self.shadow) != set(self._names):
            raise KeyError(f"the EMA holds {sorted(set(self.shadow) ^ set(self._names))[:4]}... "
                           f"that this rank does not hold, or lacks them")

    @torch.no_grad()
    def update(self, named_params=None) -> None:
        """One EMA step over the bound tensors (`named_params`, pairs of (name, tensor), binds them first)."""
        if named_params is not None:
            self.bind(named_params)
        if not self._sources:
            return
        if not self.shadow:
            self.shadow = {n: s.detach().float().clone() for n, s in zip(self._names, self._sources)}
        else:
            if self._targets is None:
                self._targets = [self.shadow[n] for n in self._names]
            d = self.decay_at(self.t)
            torch._foreach_mul_(self._targets, d)
            torch._foreach_add_(self._targets, self._sources, alpha=1 - d)
        self.t += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "t": self.t, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict, step: int | None = None) -> None:
        """`step`: the checkpoint's step, the fallback for `t` in checkpoints written before the warm-up."""
        self.decay = state["decay"]
        self.shadow = {k: v.detach().float().clone() for k, v in state["shadow"].items()}
        self.t = int(state["t"]) if "t" in state else int(step if step is not None else bool(self.shadow))
        self._targets = None
