"""Built-in evaluation tasks: images, labels, class names and templates from offline data."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from pretrain.data.sources import fashion_mnist as fmnist

# Eval prompts, deliberately few and generic (CLIP-style); training captions use their own, larger set.
FASHION_TEMPLATES = ["a photo of a {c}.", "a black and white photo of a {c}.", "a low resolution photo of a {c}.",
                     "a photo of the {c}.", "a blurry photo of a {c}."]


def fashion_mnist(transform, limit: int = 0):
    images, labels = fmnist.load_split("test")
    if limit:
        images, labels = images[:limit], labels[:limit]
    x = torch.stack([transform(Image.fromarray(np.asarray(im))) for im in images])
    return {"images": x, "labels": torch.from_numpy(labels), "classnames": fmnist.CLASSNAMES,
            "templates": FASHION_TEMPLATES, "dataset": "fashion_mnist", "split": "test"}


TASKS = {"fashion_mnist": fashion_mnist}
