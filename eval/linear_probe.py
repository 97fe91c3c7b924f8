"""Linear probe: scikit-learn logistic regression on frozen, L2-normalised image features.

The inverse regularisation C is chosen on a validation split drawn from the training features (a seeded 20%),
with CLIP_benchmark's search shape: a coarse grid over 97 log-spaced values, then a halving refinement around
the best. The chosen C is refit on all training features and scored on the test set with the zero-shot
metrics (lp_acc1, lp_acc5, lp_mean_per_class_recall).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from . import zeroshot
from .data import LinearProbe
from .features import map_images

C_GRID = np.logspace(-6, 6, 97)
VAL_FRACTION = 0.2


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> LogisticRegression:
    # one BLAS thread: on these small problems threads only contend (measured 10-20x slower with two)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(x, y)


def _scores(clf: LogisticRegression, x: np.ndarray, n_classes: int) -> torch.Tensor:
    """Class probabilities for all n_classes (classes absent from training get 0)."""
    out = np.zeros((len(x), n_classes))
    out[:, clf.classes_] = clf.predict_proba(x)
    return torch.from_numpy(out)


def sweep(x: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0) -> tuple[float, float]:
    """(best C, its validation top-1)."""
    perm = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, int(len(x) * VAL_FRACTION))
    val, fit = perm[:n_val], perm[n_val:]
    cache: dict[int, float] = {}

    def val_acc(i: int) -> float:
        if i not in cache:
            clf = _fit(x[fit], y[fit], C_GRID[i], seed)
            cache[i] = zeroshot.accuracy(_scores(clf, x[val], n_classes), torch.from_numpy(y[val]))[0]
        return cache[i]

    def best(candidates) -> int:  # the first best, as CLIP_benchmark's find_peak
        return max(candidates, key=lambda i: (val_acc(i), -candidates.index(i)))

    peak, span = best(list(range(0, len(C_GRID), 16))), 8
    while span:
        peak = best([max(peak - span, 0), peak, min(peak + span, len(C_GRID) - 1)])
        span //= 2
    return float(C_GRID[peak]), cache[peak]


def fit_and_score(train_x, train_y, test_x, test_y, n_classes: int, seed: int = 0) -> dict[str, float]:
    c, val_acc1 = sweep(train_x, train_y, n_classes, seed)
    clf = _fit(train_x, train_y, c, seed)
    out = zeroshot.metrics(_scores(clf, test_x, n_classes), torch.from_numpy(test_y), n_classes, prefix="lp_")
    return {**out, "C": c, "val_acc1": val_acc1}


@torch.no_grad()
def evaluate(model, tokenizer, transform, data: LinearProbe, batch_size: int = 256, amp: bool = False,
             rank: int = 0, world: int = 1, workers: int = 0, progress: bool = True, seed: int = 0):
    """(metrics, test images used, skipped images by reason); metrics only on rank 0 (None elsewhere)."""
    param = next(model.parameters())

    def features(x: torch.Tensor, _) -> torch.Tensor:
        with torch.autocast(param.device.type, enabled=amp):
            return F.normalize(model.encode_image(x.to(param.device, param.dtype)), dim=-1).float().cpu()

    splits, skipped = [], None
    for split in (data.train, data.test):
        kept, split_skipped = map_images(split.images, transform, features, batch_size, rank, world,
                                         f"{split.name} {split.info.get('split', '')}", workers, progress)
        labels = np.array([split.labels[i] for indices, _ in kept for i in indices])
        splits.append((torch.cat([out for _, out in kept]).numpy(), labels))
        skipped = split_skipped if skipped is None else skipped + split_skipped
    if rank != 0:
        return None, 0, skipped
    (train_x, train_y), (test_x, test_y) = splits
    return fit_and_score(train_x, train_y, test_x, test_y, len(data.test.classnames), seed), len(test_y), skipped
