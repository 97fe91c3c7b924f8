"""Image-text retrieval, as CLIP_benchmark's metrics.zeroshot_retrieval computes it.

An image may have several captions. Scores are cosines of every caption with every image; a caption's
positives are its own image. Recall@k is CLIP's: a query scores 1 if any positive is among its top k, else 0,
averaged over queries. CLIP_benchmark's names: `image_retrieval_recall@k` is text->image (a caption finds its
image), `text_retrieval_recall@k` is image->text. With fewer than k candidates, k is capped at their number
(CLIP_benchmark raises there).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import Retrieval
from .features import map_images

RECALL_AT = (1, 5, 10)


def _hits(scores: torch.Tensor, positives: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Per query row: is a positive among the top k? Rows in chunks of batch_size, as CLIP_benchmark's
    batchify takes them, so that ties between equal scores (identical captions) break the same way."""
    k = min(k, scores.shape[1])
    out = [positives[i:i + batch_size].gather(1, torch.topk(scores[i:i + batch_size], k, dim=1)[1]).any(dim=1)
           for i in range(0, len(scores), batch_size)]
    return torch.cat(out)


def metrics(images: torch.Tensor, texts: torch.Tensor, text_image: torch.Tensor, batch_size: int,
            recall_at=RECALL_AT) -> dict[str, float]:
    """images [N, D] and texts [T, D] normalised; text_image[t] = the row of caption t's image."""
    scores = texts @ images.t()
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(len(scores)), text_image] = True
    out = {}
    for k in recall_at:
        out[f"image_retrieval_recall@{k}"] = _hits(scores, positives, k, batch_size).float().mean().item()
        out[f"text_retrieval_recall@{k}"] = _hits(scores.T, positives.T, k, batch_size).float().mean().item()
    return out


@torch.no_grad()
def evaluate(model, tokenizer, transform, data: Retrieval, batch_size: int = 256, amp: bool = False,
             rank: int = 0, world: int = 1, workers: int = 0, progress: bool = True):
    """(metrics, images used, skipped images by reason); metrics only on rank 0 (None elsewhere). A batch of
    images is embedded together with all their captions, as in CLIP_benchmark."""
    param = next(model.parameters())

    def embed(x: torch.Tensor, indices: list[int]):
        captions = [c for i in indices for c in data.captions[i]]
        with torch.autocast(param.device.type, enabled=amp):
            images = F.normalize(model.encode_image(x.to(param.device, param.dtype)), dim=-1)
            texts = F.normalize(model.encode_text(tokenizer(captions).to(param.device)), dim=-1)
        return images.cpu(), texts.cpu()

    kept, skipped = map_images(data.images, transform, embed, batch_size, rank, world, data.name, workers, progress)
    if rank != 0:
        return None, 0, skipped
    counts = torch.tensor([len(data.captions[i]) for indices, _ in kept for i in indices])
    text_image = torch.repeat_interleave(torch.arange(len(counts)), counts)
    images, texts = torch.cat([out[0] for _, out in kept]), torch.cat([out[1] for _, out in kept])
    return metrics(images, texts, text_image, len(kept[0][0])), len(counts), skipped
