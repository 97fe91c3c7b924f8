"""EMA of the weights: the momentum model that PIM inherits from at a growth step.

θ̄ ← μ·θ̄ + (1−μ)·θ after every optimizer step. Kept in fp32 on every rank as full tensors keyed by canonical
parameter name, so it is saved in the client state of a checkpoint and read by growth without resharding.
"""
import torch


class EMA:
    def __init__(self, decay: float):
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, named_params) -> None:
        """named_params: iterable of (name, full tensor) pairs; the first call copies them."""
        for name, p in named_params:
            p = p.detach().float()
            if name not in self.shadow:
                self.shadow[name] = p.clone()
            else:
                self.shadow[name].mul_(self.decay).add_(p, alpha=1 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
