"""The one index-map abstraction that every growth operator is written in.

`IndexMap` describes one tensor dimension: for each target index, the source index it copies (`NEW` when it has
none) and a scale. `TensorMap` is a whole tensor: its source tensor and one IndexMap per dimension. Applying a
TensorMap is one `index_select` per non-identity dimension, so weights, EMA weights and both Adam moments of any
parameter go through the same few lines: weights and `exp_avg` take the scale, `exp_avg_sq` its square (the
method doc's rule), new entries take the fresh initialisation (or zero) for weights and zero for moments.

Symmetry breaking (`fan_in(split)`): the weights that read a duplicated unit (its consumers: the fan-in side of
the next linear map) are split unequally between the copies, LEMON-style, the fractions summing to 1, so every
linear sum, and with it the grown function, is unchanged. A source index copied k times gives its copy number r
(0-based, in target order) the fraction (1 + s·c_r)/k with c_r = (2r − (k−1))/(k−1), i.e. c runs evenly from −1
to +1 (k = 2, s = 0.5: 0.25 and 0.75); k = 1 keeps 1. s = 0 is plain tiling (1/k each), whose copies AdamW
keeps bit-identical forever: identical copies get identical gradients. With s > 0 the copies' gradients differ
(the consumers weigh them differently), but mostly by a scale that Adam normalises away, so they separate slowly
(through LayerNorm). Antithetic noise (`antithetic`, `TensorMap.noise`) makes the copies compute different
things while the readers' shares cancel it to first order.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NEW = -1


@dataclass(frozen=True, eq=False)
class IndexMap:
    src: torch.Tensor      # int64 [target size]: source index, or NEW
    scale: torch.Tensor    # float64 [target size]
    source_size: int

    @classmethod
    def identity(cls, n: int) -> "IndexMap":
        return cls(torch.arange(n), torch.ones(n, dtype=torch.float64), n)

    @classmethod
    def new(cls, n: int) -> "IndexMap":
        """n target indices with no source."""
        return cls(torch.full((n,), NEW), torch.ones(n, dtype=torch.float64), 0)

    @classmethod
    def tile(cls, n_src: int, n_dst: int) -> "IndexMap":
        """Channel duplication: target j copies source j % n_src (each source index n_dst / n_src times)."""
        return cls(torch.arange(n_dst) % n_src, torch.ones(n_dst, dtype=torch.float64), n_src)

    @classmethod
    def concat(cls, maps: list["IndexMap"]) -> "IndexMap":
        """Maps of consecutive blocks of one dimension ([q; k; v], heads), source indices offset per block."""
        srcs, offset = [], 0
        for m in maps:
            srcs.append(torch.where(m.src == NEW, m.src, m.src + offset))
            offset += m.source_size
        return cls(torch.cat(srcs), torch.cat([m.scale for m in maps]), offset)

    @property
    def size(self) -> int:
        return self.src.numel()

    def copies(self) -> torch.Tensor:
        """How many target indices copy each target's source index (1 for new ones)."""
        counts = torch.bincount(self.src[self.src != NEW], minlength=max(self.source_size, 1))
        return torch.where(self.src == NEW, 1, counts[self.src.clamp(min=0)]).to(torch.float64)

    def copy_rank(self) -> torch.Tensor:
        """Per target index, its copy number r among the targets of the same source index, in target order
        (0 for new ones)."""
        rank = torch.zeros(self.size, dtype=torch.int64)
        old = (self.src != NEW).nonzero().flatten()
        if old.numel():
            src = self.src[old]
            order = torch.argsort(src, stable=True)
            counts = torch.bincount(src, minlength=max(self.source_size, 1))
            start = torch.cumsum(counts, 0) - counts
            rank[old[order]] = torch.arange(old.numel()) - start[src[order]]
        return rank

    def fractions(self, split: float = 0.0) -> torch.Tensor:
        """Per target index, its share of its source index: (1 + split·c_r)/k with c_r = (2r − (k−1))/(k−1)
        for a source copied k > 1 times, copy number r (`copy_rank`); 1 for k = 1 and for new indices. The
        shares of one source sum to 1; split = 0 gives 1/k each."""
        if not 0.0 <= split < 1.0:
            raise ValueError(f"split must be in [0, 1), got {split}")
        k = self.copies()
        centred = (2 * self.copy_rank().to(torch.float64) - (k - 1)) / (k - 1).clamp(min=1)
        return (1 + split * centred) / k

    def antithetic(self, split: float = 0.0) -> torch.Tensor:
        """Per target index, the coefficient d_r of its copy's symmetry-breaking noise (TensorMap.noise): for a
        source produced k > 1 times (a duplicated unit: scale 1), d_r = c_r − split·C/k with c_r as in
        `fractions` and C = Σ_r c_r², so that Σ_r fractions_r·d_r = 0: the readers of the copies, which weigh
        them by `fractions(split)`, see the noise cancel. 0 for single, new and fan-in (scale ≠ 1) indices."""
        k = self.copies()
        centred = (2 * self.copy_rank().to(torch.float64) - (k - 1)) / (k - 1).clamp(min=1)
        total = k * (k + 1) / (3 * (k - 1).clamp(min=1))  # Σ_r c_r² over the k copies of a source
        d = centred - split * total / k
        return torch.where((k > 1) & (self.src != NEW) & (self.scale == 1), d, torch.zeros_like(d))

    def fan_in(self, split: float = 0.0) -> "IndexMap":
        """The map for an input dimension: duplicated inputs are summed, so the copies' weights share the
        original by `fractions(split)` (equally, 1/k each, at split 0)."""
        if split == 0.0:
            return IndexMap(self.src, self.scale / self.copies(), self.source_size)
        return IndexMap(self.src, self.scale * self.fractions(split), self.source_size)

    def scaled(self, factor) -> "IndexMap":
        return IndexMap(self.src, self.scale * factor, self.source_size)

    def is_identity(self) -> bool:
        return (self.size == self.source_size and torch.equal(self.src, torch.arange(self.size))
                and bool((self.scale == 1).all()))


@dataclass(frozen=True)
class Identity:
    """The implicit source of an adapter the source model does not have: the identity (moments zero)."""
    size: int


@dataclass(frozen=True, eq=False)
class TensorMap:
    source: str | Identity | None   # None: every entry is new
    dims: tuple[IndexMap, ...] = ()
    new: str = "init"               # new entries of the weights: "init" (fresh initialisation) or "zero"

    def _gather(self, t: torch.Tensor, power: int) -> torch.Tensor:
        for d, m in enumerate(self.dims):
            if m.is_identity():
                continue
            t = t.index_select(d, m.src.clamp(min=0))
            if not bool((m.scale == 1).all()):
                t = t * _along(m.scale ** power, d, t.ndim).to(t.dtype)
        return t

    def new_mask(self, ndim: int) -> torch.Tensor | None:
        """Broadcastable bool mask of the target entries that have no source (None when there are none)."""
        mask = None
        for d, m in enumerate(self.dims):
            if bool((m.src == NEW).any()):
                dim_mask = _along(m.src == NEW, d, ndim)
                mask = dim_mask if mask is None else mask | dim_mask
        return mask

    def noise(self, src: torch.Tensor, split: float, sigma: float, seed: int) -> torch.Tensor | None:
        """Antithetic symmetry-breaking noise for the duplicated units this tensor produces (None when it
        produces none): along each dimension whose map duplicates a unit, copy r of source index i gets
        d_r·n_i (IndexMap.antithetic), n ~ N(0, (sigma·RMS(src))²) drawn once per source index (and target
        index along the other dimensions) from `seed`. Its readers sum the copies with weights that make the
        noise cancel: every linear path is unchanged, a nonlinear one (GELU, LayerNorm's variance) changes at
        second order in sigma. Unlike the unequal split alone, the copies now compute different things, so
        their gradients differ in direction, not only in scale (which Adam normalises away)."""
        total = None
        shape = [m.size for m in self.dims]
        gen = torch.Generator().manual_seed(seed)
        for d, m in enumerate(self.dims):
            coef = m.antithetic(split)
            if not bool(coef.any()):
                continue
            drawn = torch.randn([m.source_size if i == d else n for i, n in enumerate(shape)], generator=gen,
                                dtype=torch.float64)
            term = drawn.index_select(d, m.src.clamp(min=0)) * _along(coef, d, len(shape))
            total = term if total is None else total + term
        if total is None:
            return None
        rms = float(src.detach().double().pow(2).mean().sqrt())
        return total * (sigma * rms)

    def weights(self, src: torch.Tensor | None, init: torch.Tensor, noise: tuple[float, float, int] | None = None
                ) -> torch.Tensor:
        """T(θ): source entries copied and scaled; new entries from `init` (or zero). `noise` = (split, sigma,
        seed) adds the antithetic symmetry-breaking noise (`noise`) to the copies."""
        if self.source is None:
            return init.clone() if self.new == "init" else torch.zeros_like(init)
        if isinstance(self.source, Identity):
            src = torch.eye(self.source.size, dtype=init.dtype)
        out = self._gather(src.to(init.dtype), 1)
        if noise is not None and noise[1] > 0 and isinstance(self.source, str) and self.dims:
            extra = self.noise(src, *noise)
            if extra is not None:
                out = out + extra.to(out.dtype)
        mask = self.new_mask(out.ndim)
        if mask is not None:
            out = torch.where(mask, init if self.new == "init" else torch.zeros((), dtype=out.dtype), out)
        return _fresh(out, src)

    def moment(self, src: torch.Tensor | None, power: int, like: torch.Tensor) -> torch.Tensor:
        """An Adam moment: entries copied with scale**power, new entries (and absent state) zero."""
        if src is None or not isinstance(self.source, str):
            return torch.zeros_like(like)
        out = self._gather(src.to(like.dtype), power)
        mask = self.new_mask(out.ndim)
        return _fresh(out.masked_fill(mask, 0) if mask is not None else out, src)


def _fresh(out: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """A grown tensor never aliases its source (an identity map gathers nothing)."""
    return out.clone() if out.data_ptr() == src.data_ptr() else out.contiguous()


def _along(v: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[dim] = -1
    return v.view(shape)
