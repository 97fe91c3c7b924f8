"""Growing tensors in memory: T and the PIM blend applied to weights and Adam moments of one parameter, or to a
whole weight dict (live weights, EMA weights, a model's state_dict). The checkpoint writer streams parameters
through `grow_parameter`; search and tests can grow in-memory models with `grow_weights`.
"""
from __future__ import annotations

import torch

from .errors import GrowthError
from .index_map import TensorMap
from .pim import PIM


def source_of(tmap: TensorMap, tensors: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The source tensor a map reads (None for new tensors and implicit identities)."""
    if not isinstance(tmap.source, str):
        return None
    if tmap.source not in tensors:
        raise GrowthError(f"the source weights lack {tmap.source!r}")
    return tensors[tmap.source]


def grow_parameter(tmap: TensorMap, weight: torch.Tensor | None, exp_avg: torch.Tensor | None,
                   exp_avg_sq: torch.Tensor | None, init: torch.Tensor, pim: PIM,
                   reset_moments: bool = False) -> dict[str, torch.Tensor]:
    """fp32 master weight and Adam moments of one target parameter (absent source moments count as zero)."""
    fp32 = pim.blend(pim.mapped(tmap, weight, init), init)
    if reset_moments:
        return {"fp32": fp32, "exp_avg": torch.zeros_like(init), "exp_avg_sq": torch.zeros_like(init)}
    avg, avg_sq = pim.moments(tmap.moment(exp_avg, 1, init), tmap.moment(exp_avg_sq, 2, init))
    return {"fp32": fp32, "exp_avg": avg, "exp_avg_sq": avg_sq}


def grow_from_source(tmap: TensorMap, tensors: dict[str, torch.Tensor], ema: dict[str, torch.Tensor],
                     init: torch.Tensor, pim: PIM, reset_moments: bool = False) -> dict[str, torch.Tensor]:
    """One target parameter from its source's universal tensors (`fp32`, `exp_avg`, `exp_avg_sq`; {} for a new
    tensor), inheriting the EMA weights instead of the live ones when PIM reads them: what the checkpoint writer
    writes and what the search proxy-trains."""
    weight = source_of(tmap, ema) if pim.source == "ema" and pim.inherit else tensors.get("fp32")
    return grow_parameter(tmap, weight, tensors.get("exp_avg"), tensors.get("exp_avg_sq"), init, pim, reset_moments)


def grow_weights(plan: dict[str, TensorMap], weights: dict[str, torch.Tensor], init: dict[str, torch.Tensor],
                 pim: PIM) -> dict[str, torch.Tensor]:
    """m·T(weights) + (1−m)·init for every target parameter."""
    return {name: pim.blend(pim.mapped(tmap, source_of(tmap, weights), init[name]), init[name])
            for name, tmap in plan.items()}
