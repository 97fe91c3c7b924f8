"""PIM, parameter inheritance with momentum: θ_new = m·T(θ_src) + (1−m)·θ_init, moments scaled by m and m².

θ_src is the EMA (momentum) model (`source="ema"`) or the last weights (`source="last"`); θ_init is a fresh
CLIP(new_arch) initialisation drawn with `seed`. m = 1 is plain, function-preserving inheritance. The
defaults live here and only here, set from the GrowCLIP offline experiment (docs/results/growclip-offline.md,
"Defaults", run at fdbbdb6): m = 1, since m = 0.9 ended within seed noise of it (-0.022 held-out loss against a
std of 0.075) and m = 0.7 worse (+0.119); source = ema, since `last` ended within noise (+0.008). Inheritance
itself matters: a fresh initialisation ended 0.49 worse.

`inherit=False` is the no-inheritance ablation (issue 11): the grown architecture starts from θ_init alone, its
Adam moments and step counter are reset (and the EMA's warm-up restarts), as a model trained from scratch at that
architecture would be.

Two settings of how T maps, kept here beside the blend so one PIM value carries every growth choice (and the
growth history records them): `split` (default 0.5), the unequal share of duplicated units in the weights that
read them (growth/index_map.py IndexMap.fan_in; 0 is plain tiling, whose copies AdamW never separates), and
`depth_init` (default "copy"), a new block's non-residual weights copied from the old block it follows, or
"fresh" (θ_init); its residual outputs are zero either way, so both are exact (growth/plan.py). The defaults
follow the method doc's "What makes growth pay" (break symmetry losslessly; stack) and are not yet tuned by a
measurement. `noise` (default 0): antithetic noise on the weights that write duplicated units, first-order
exact (growth/index_map.py `IndexMap.antithetic`; growth/README.md, "Symmetry breaking").

Measured again in docs/results/growth-pays.md (synthetic stream, "Defaults set from these tables"): split 0,
split 0.5 and noise 0.1 ended within 0.01 of each other on the same move (0.691, 0.684, 0.688), and copied or
fresh new blocks within 0.01 (0.684, 0.677): the defaults stay (split 0.5, exact; noise 0; copy). m = 0.9 and
source = last ended within noise of each other (0.607, 0.604) on a move the default PIM did not run there, so
m = 1 and ema stay.
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import torch

from pretrain.arch import Architecture
from pretrain.model import CLIP

from .errors import GrowthError
from .operators import check_settings


@dataclass(frozen=True)
class PIM:
    m: float = 1.0          # docs/results/growclip-offline.md, "Defaults"
    source: str = "ema"     # idem
    seed: int = 0
    inherit: bool = True  # False: no inheritance (θ = θ_init, moments and step reset)
    split: float = 0.5      # symmetry breaking of duplicated units, in [0, 1); 0: plain tiling
    depth_init: str = "copy"  # new blocks: "copy" (the old block each follows) or "fresh"
    noise: float = 0.0      # antithetic symmetry-breaking noise of duplicated units, x the tensor's RMS

    def __post_init__(self):
        if not 0.0 < self.m <= 1.0:
            raise GrowthError(f"PIM momentum m must be in (0, 1], got {self.m}")
        if self.source not in ("ema", "last"):
            raise GrowthError(f"PIM source must be 'ema' or 'last', got {self.source!r}")
        check_settings(self.split, self.depth_init, "PIM")
        if isinstance(self.noise, bool) or not isinstance(self.noise, (int, float)) or not 0 <= self.noise < 1:
            raise GrowthError(f"PIM noise must be a number in [0, 1), got {self.noise!r}")

    def mapped(self, tmap, src: torch.Tensor | None, init: torch.Tensor) -> torch.Tensor:
        """T(θ) of one parameter, with this PIM's symmetry-breaking noise (seeded by the PIM seed and the source
        tensor's name, so every rank and every call draws the same)."""
        seed = (self.seed * 1_000_003 + zlib.crc32(str(tmap.source).encode())) % (2 ** 63)
        return tmap.weights(src, init, (self.split, self.noise, seed) if self.noise else None)

    def blend(self, mapped: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
        if not self.inherit:
            return init.clone()
        return mapped if self.m == 1.0 else self.m * mapped + (1 - self.m) * init

    def moments(self, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.inherit:
            return torch.zeros_like(exp_avg), torch.zeros_like(exp_avg_sq)
        if self.m == 1.0:
            return exp_avg, exp_avg_sq
        return exp_avg * self.m, exp_avg_sq * (self.m * self.m)

    def to_dict(self) -> dict:
        return asdict(self)


def fresh_init(arch: Architecture, seed: int) -> dict[str, torch.Tensor]:
    """θ_init: the weights CLIP(arch) draws under `seed`, without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(arch)
    return {n: p.detach() for n, p in model.named_parameters()}
