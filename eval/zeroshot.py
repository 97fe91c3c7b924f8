"""Zero-shot classification, as CLIP_benchmark's metrics.zeroshot_classification computes it.

Each class embedding is the mean of the L2-normalised embeddings of its prompts (templates with {c} filled
in), normalised again. Logits are 100 x cosine. Metrics: top-1 and top-5 accuracy (top-5 is NaN below five
classes) and mean per-class recall (scikit-learn's balanced accuracy over the classes present). A data set's
further prompt sets (`Classification.prompt_sets`, e.g. MNIST's "transfer": CLIP_benchmark's prompt beside the
training captions' templates) are scored on the same image embeddings, their keys prefixed with the set's label.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score

from .data import Classification
from .features import map_batches, map_images


@torch.no_grad()
def classifier(model, tokenizer, classnames: list[str], templates: list[str], amp: bool = False, rank: int = 0,
               world: int = 1, progress: bool = True) -> torch.Tensor:
    """[embed_dim, n_classes]; one class per batch, as CLIP_benchmark batches it."""
    device = next(model.parameters()).device

    def embed(c: int) -> torch.Tensor:
        with torch.autocast(device.type, enabled=amp):
            texts = tokenizer([t.format(c=classnames[c]) for t in templates]).to(device)
            emb = F.normalize(model.encode_text(texts), dim=-1).mean(dim=0)
            emb /= emb.norm()
        return emb.cpu()

    return torch.stack(map_batches(len(classnames), embed, rank, world, "class prompts", progress), dim=1).to(device)


def accuracy(logits: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    pred = logits.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


def metrics(logits: torch.Tensor, target: torch.Tensor, n_classes: int, prefix: str = "") -> dict[str, float]:
    acc1, acc5 = accuracy(logits, target, (1, 5)) if n_classes >= 5 else (*accuracy(logits, target), float("nan"))
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected on small subsets
        warnings.simplefilter("ignore", UserWarning)
        recall = float(balanced_accuracy_score(target.numpy(), logits.argmax(dim=1).numpy()))
    return {f"{prefix}acc1": acc1, f"{prefix}acc5": acc5, f"{prefix}mean_per_class_recall": recall}


@torch.no_grad()
def evaluate(model, tokenizer, transform, data: Classification, batch_size: int = 256, amp: bool = False,
             rank: int = 0, world: int = 1, workers: int = 0, progress: bool = True):
    """(metrics, images used, skipped images by reason); metrics only on rank 0 (None elsewhere). The metrics of
    `data.templates` have CLIP_benchmark's keys; those of each further prompt set LABEL are LABEL_acc1, ..."""
    sets = {"": data.templates, **data.prompt_sets}
    clfs = [classifier(model, tokenizer, data.classnames, templates, amp, rank, world, progress)
            for templates in sets.values()]
    param = next(model.parameters())

    def logits(x: torch.Tensor, _) -> torch.Tensor:  # each set's logits side by side: [batch, sets x classes]
        with torch.autocast(param.device.type, enabled=amp):
            feats = F.normalize(model.encode_image(x.to(param.device, param.dtype)), dim=-1)
            return torch.cat([(100.0 * feats @ clf).float().cpu() for clf in clfs], dim=1)

    kept, skipped = map_images(data.images, transform, logits, batch_size, rank, world, data.name, workers, progress)
    if rank != 0:
        return None, 0, skipped
    target = torch.tensor([data.labels[i] for indices, _ in kept for i in indices])
    out, n = torch.cat([out for _, out in kept]), len(data.classnames)
    results = {}
    for j, label in enumerate(sets):
        results.update(metrics(out[:, j * n:(j + 1) * n], target, n, f"{label}_" if label else ""))
    return results, len(target), skipped
