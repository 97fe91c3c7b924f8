"""Zero-shot classification: a classifier from class names x prompt templates, then top-k accuracy.

The prompt ensemble averages L2-normalised text embeddings per class and normalises the mean, as CLIP and
CLIP_benchmark do. Metrics: top-1, top-5 and mean per-class recall.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm


@torch.no_grad()
def build_classifier(model, tokenizer, classnames: list[str], templates: list[str], device="cpu") -> torch.Tensor:
    """[embed_dim, n_classes] matrix of normalised, template-averaged class embeddings."""
    weights = []
    for name in classnames:
        texts = tokenizer([t.format(c=name) for t in templates]).to(device)
        emb = F.normalize(model.encode_text(texts), dim=-1).mean(dim=0)
        weights.append(F.normalize(emb, dim=0))
    return torch.stack(weights, dim=1)


@torch.no_grad()
def image_logits(model, images, classifier: torch.Tensor, batch_size=256, device="cpu", progress=True):
    """images: a float tensor [N,3,S,S] (already transformed). Returns logits [N, n_classes]."""
    out = []
    for i in tqdm(range(0, len(images), batch_size), disable=not progress, desc="zero-shot", leave=False):
        feats = F.normalize(model.encode_image(images[i:i + batch_size].to(device)), dim=-1)
        out.append(100.0 * feats @ classifier)
    return torch.cat(out)


def metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    n_classes = logits.shape[1]
    topk = logits.topk(min(5, n_classes), dim=1).indices
    correct = topk == labels[:, None]
    pred = topk[:, 0]
    recalls = [(pred[labels == c] == c).float().mean().item() for c in range(n_classes) if (labels == c).any()]
    return {"acc1": correct[:, :1].any(1).float().mean().item(), "acc5": correct.any(1).float().mean().item(),
            "mean_per_class_recall": sum(recalls) / len(recalls)}
