"""Image transforms, CLIP style. Transparent images (OpenClipArt) are composited on white rather than having
their alpha dropped, which would leave black clip art on black.

The train transform takes an optional `random.Random`, so the loader can seed augmentation per sample and a
resumed run augments each sample exactly as the uninterrupted run would have. The loader calls its `crop` per
sample and `normalize_batch` once per batch: per-sample ToTensor + Normalize cost more than the PNG decode.
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = T.InterpolationMode.BICUBIC


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")
    return image.convert("RGB")


class TrainTransform:
    """RandomResizedCrop (bicubic) -> RGB -> tensor -> CLIP normalisation."""

    def __init__(self, image_size: int, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)):
        self.image_size, self.scale, self.ratio = image_size, tuple(scale), tuple(ratio)

    def crop_params(self, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop.get_params, drawing from `rng` instead of torch's global RNG."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return rng.randint(0, height - h), rng.randint(0, width - w), h, w
        in_ratio = width / height  # fallback: central crop at the nearest allowed ratio
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def crop(self, image: Image.Image, rng: random.Random | None = None) -> Image.Image:
        """The random resized crop, as an RGB image of image_size x image_size."""
        if image.mode not in ("L", "LA", "RGB", "RGBA"):  # PIL would resize palette images with NEAREST
            image = to_rgb(image)  # (alpha is composited after the resize, on the small image: much cheaper)
        top, left, h, w = self.crop_params(*image.size, rng or random.Random())
        size = (self.image_size, self.image_size)
        return to_rgb(image.resize(size, Image.Resampling.BICUBIC, box=(left, top, left + w, top + h)))

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        return F.normalize(F.to_tensor(self.crop(image, rng)), OPENAI_MEAN, OPENAI_STD)


def normalize_batch(images: list[np.ndarray]) -> torch.Tensor:
    """HWC uint8 RGB arrays -> float32 [B, 3, H, W], as ToTensor + Normalize would give one by one."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return batch.sub_(mean).div_(std).contiguous()


def train_transform(image_size: int, scale=(0.9, 1.0)) -> TrainTransform:
    return TrainTransform(image_size, scale)


def eval_transform(image_size: int) -> T.Compose:
    """Resize the short side (bicubic) -> center crop -> RGB -> tensor -> CLIP normalisation."""
    return T.Compose([T.Resize(image_size, interpolation=BICUBIC), T.CenterCrop(image_size), to_rgb, T.ToTensor(),
                      T.Normalize(OPENAI_MEAN, OPENAI_STD)])
