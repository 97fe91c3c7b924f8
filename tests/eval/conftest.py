"""Eval fixtures: one tiny CLIP trained with real DeepSpeed (2 CPU ranks, ZeRO-2) per session, and a
retrieval set of Fashion-MNIST test images with 2-3 templated captions each, as JSONL and as a webdataset;
an untrained stand-in model for fast tests of data handling and metric semantics."""
import json
import random
import zlib

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from eval.load import load_checkpoint
from pretrain.data.sources import fashion_mnist as fmnist
from pretrain.data.transforms import eval_transform
from tests.conftest import launch

RETRIEVAL_IMAGES = 300
VOCAB = 100


@pytest.fixture(scope="session")
def trained(tiny_data, tmp_path_factory):
    """Run folder of an 80-step run: clearly-above-chance zero-shot accuracy. 40 steps gave 0.22-0.33 on this
    machine and once 0.115 in CI (2026-11-29), under the parity test's bar of 0.13; 80 steps gave 0.27-0.36."""
    out = tmp_path_factory.mktemp("eval_run")
    launch(out, tiny_data, "train.steps=80", "train.lr=0.002", "train.warmup=4")
    return out


@pytest.fixture(scope="session")
def loaded(trained):
    return load_checkpoint(trained)


def captions(index: int, label: int) -> list[str]:
    rng = random.Random(index)
    return [rng.choice(fmnist.TEMPLATES).format(rng.choice(fmnist.SYNONYMS[label])) for _ in range(2 + index % 2)]


@pytest.fixture(scope="session")
def retrieval_set(tmp_path_factory):
    """{"jsonl": path, "shards": path, "images": [png paths], "captions": [[str]]}."""
    root = tmp_path_factory.mktemp("fmnist_retrieval")
    images, labels = fmnist.load_split("test")
    (root / "img").mkdir()
    rows, paths, caps = [], [], []
    for i in range(RETRIEVAL_IMAGES):
        path = root / "img" / f"{i:05d}.png"
        Image.fromarray(images[i]).save(path)
        paths.append(path)
        caps.append(captions(i, int(labels[i])))
        rows.append(json.dumps({"image": f"img/{path.name}", "captions": caps[-1]}))
    (root / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    with wds.TarWriter(str(root / "pairs.tar"), encoder=False) as tar:
        for i, (path, c) in enumerate(zip(paths, caps)):
            tar.write({"__key__": f"{i:05d}", "png": path.read_bytes(), "txt": "\n".join(c).encode()})
    return {"jsonl": str(root / "pairs.jsonl"), "shards": str(root / "pairs.tar"), "images": paths, "captions": caps}


class FakeCLIP(torch.nn.Module):
    """A CLIP-shaped model without training: a random linear image encoder and bag-of-words text encoder."""

    def __init__(self, size: int = 28, dim: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.image = torch.nn.Linear(3 * size * size, dim)
        self.words = torch.nn.Embedding(VOCAB, dim)

    def encode_image(self, x):
        return self.image(x.flatten(1))

    def encode_text(self, tokens):
        return self.words(tokens).sum(dim=1)


def fake_tokenizer(texts):
    """Words -> stable ids (0 is padding), padded to 8."""
    rows = [[1 + zlib.crc32(w.encode()) % (VOCAB - 1) for w in t.lower().split()][:8] for t in texts]
    return torch.tensor([r + [0] * (8 - len(r)) for r in rows])


@pytest.fixture(scope="session")
def fake():
    """(model, tokenizer, transform) for tests of data handling and metric semantics."""
    return FakeCLIP().eval(), fake_tokenizer, eval_transform(28)


@pytest.fixture
def image_folder(tmp_path):
    """A labelled folder: 3 classes x 3 random 28x28 PNGs."""
    rng = np.random.default_rng(0)
    for c in ("cat", "dog", "sea_lion"):
        (tmp_path / "folder" / c).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "folder" / c / f"{i}.png")
    return tmp_path / "folder"
