"""Batched, sharded embedding with a progress bar.

Batch b is computed by rank b % world and the per-batch results are gathered to every rank, so no rank embeds
a whole eval set alone. The batches themselves do not depend on the world size, so neither do the numbers
(bit for bit on the CPU). Images that fail to decode are dropped from their batch and counted by reason.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .data import EvalDataError, TooLarge, open_image


def gather(local: dict[int, Any], world: int) -> dict[int, Any]:
    """The union of every rank's {batch: result} (results must be CPU objects)."""
    if world == 1:
        return local
    parts: list = [None] * world
    dist.all_gather_object(parts, local)
    return {b: out for part in parts for b, out in part.items()}


def map_batches(n: int, fn: Callable[[int], Any], rank: int, world: int, desc: str, progress: bool = True) -> list:
    """[fn(0), ..., fn(n-1)] on every rank, each fn(b) computed on rank b % world."""
    mine = range(rank, n, world)
    local = {b: fn(b) for b in tqdm(mine, desc=desc, leave=False, disable=not progress or rank != 0)}
    merged = gather(local, world)
    return [merged[b] for b in range(n)]


class _Decoded(Dataset):
    def __init__(self, images: list, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(open_image(self.images[i]))
        except (TooLarge, Image.DecompressionBombError):
            return i, "too_large"
        except Exception:  # noqa: BLE001 - PIL raises many types for broken files (OSError, SyntaxError, ...)
            return i, "bad_image"


def _collate(items):
    kept = [(i, x) for i, x in items if not isinstance(x, str)]
    skipped = Counter(x for _, x in items if isinstance(x, str))
    return [i for i, _ in kept], torch.stack([x for _, x in kept]) if kept else None, skipped


def map_images(images: list, transform, fn: Callable[[torch.Tensor, list[int]], Any], batch_size: int, rank: int,
               world: int, desc: str, workers: int = 0, progress: bool = True) -> tuple[list, Counter]:
    """fn(image batch, their indices) over all images. Returns ([(indices, fn's result)] in batch order,
    skipped images by reason), on every rank."""
    batches = [list(range(i, min(i + batch_size, len(images)))) for i in range(0, len(images), batch_size)]
    mine = list(range(rank, len(batches), world))
    # a private generator: a DataLoader otherwise draws its seed from the global RNG, and in-training eval must
    # leave training's random numbers (and so exact resume) untouched
    loader = DataLoader(_Decoded(images, transform), batch_sampler=[batches[b] for b in mine], collate_fn=_collate,
                        num_workers=workers, generator=torch.Generator())
    local = {}
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress or rank != 0)
    for b, (indices, x, skipped) in zip(mine, bar):
        local[b] = (indices, fn(x, indices) if indices else None, skipped)
    merged = gather(local, world)
    ordered = [merged[b] for b in range(len(batches))]
    skipped = sum((s for _, _, s in ordered), Counter())
    kept = [(indices, out) for indices, out, _ in ordered if indices]
    if not kept:
        raise EvalDataError(f"{desc}: none of the {len(images)} images could be decoded (skipped {dict(skipped)})")
    return kept, skipped
