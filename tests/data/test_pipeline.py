import io
import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.data.pipeline import TrainLoader
from pretrain.data.transforms import OPENAI_MEAN, OPENAI_STD, eval_transform, normalize_batch, train_transform

from .helpers import good_sample, png_bytes, png_header_only, write_tar


def ids(tokenizer, texts: torch.Tensor) -> list[int]:
    """Sample index from the caption "picture number i"."""
    return [int(tokenizer.decode(row.tolist()).rsplit(" ", 1)[1]) for row in texts]


def take(loader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_batch_shapes_and_normalisation(synthetic_shards, tokenizer):
    images, texts = take(TrainLoader(synthetic_shards, tokenizer, 20, 8, 0, 1, workers=0), 1)[0]
    assert images.shape == (8, 3, 20, 20) and images.dtype == torch.float32
    assert texts.shape == (8, 16) and texts.dtype == torch.int64
    lo = min((0 - m) / s for m, s in zip(OPENAI_MEAN, OPENAI_STD, strict=True))
    hi = max((1 - m) / s for m, s in zip(OPENAI_MEAN, OPENAI_STD, strict=True))
    assert lo - 1e-5 <= images.min() and images.max() <= hi + 1e-5 and images.std() > 0.5


def test_transforms():
    image = Image.open(io.BytesIO(png_bytes(7, size=40)))
    t = train_transform(24)
    one = t(image, random.Random(3))
    assert one.shape == (3, 24, 24)
    assert torch.equal(normalize_batch([np.asarray(t.crop(image, random.Random(3)))])[0], one)
    assert not torch.equal(t(image, random.Random(4)), one)
    assert eval_transform(24)(image.convert("L")).shape == (3, 24, 24)
    white = eval_transform(8)(Image.new("RGB", (8, 8), "white"))
    clear = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # transparent clip art becomes white, not black
    assert torch.allclose(eval_transform(8)(clear), white) and torch.allclose(t(clear)[:, :8, :8], white)


@pytest.mark.parametrize("workers, batch, batches", [(0, 10, 3), (2, 5, 6)])
def test_ranks_see_disjoint_samples_covering_the_epoch(synthetic_shards, tokenizer, workers, batch, batches):
    seen = []
    for rank in range(2):
        loader = TrainLoader(synthetic_shards, tokenizer, 8, batch, rank, 2, workers=workers, shuffle_buffer=5)
        seen.append([i for _, texts in take(loader, batches) for i in ids(tokenizer, texts)])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(60))


def test_fewer_shards_than_streams_splits_by_sample(synthetic_shards, tokenizer, caplog):
    seen = []
    with caplog.at_level(logging.WARNING, logger="pretrain.data.pipeline"):
        for rank in range(2):
            loader = TrainLoader(synthetic_shards[:2], tokenizer, 8, 7, rank, 2, workers=2)
            seen += [i for _, texts in take(loader, 2) for i in ids(tokenizer, texts)]
    assert "index modulo 4" in caplog.text
    assert len(seen) == len(set(seen)) == 28 and set(seen) <= set(range(30))


def test_order_is_seeded_and_reshuffled_each_epoch(synthetic_shards, tokenizer):
    def order(seed):
        return [i for _, t in take(TrainLoader(synthetic_shards, tokenizer, 8, 10, 0, 1, 0, seed), 12)
                for i in ids(tokenizer, t)]

    a = order(0)
    assert a == order(0) and a != order(1)
    assert sorted(a[:60]) == sorted(a[60:]) == list(range(60)) and a[:60] != a[60:]


@pytest.fixture(scope="module")
def resume_shards(synthetic_shards, tmp_path_factory):
    bad = {"__key__": "badcaption", "png": png_bytes(1), "txt": b"\xff\xfe"}
    extra = write_tar(tmp_path_factory.mktemp("extra") / "extra.tar", [good_sample(100), bad, good_sample(101)])
    return synthetic_shards + [extra]


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_exact_resume_across_epochs(resume_shards, tokenizer, workers, tmp_path):
    make = lambda: TrainLoader(resume_shards, tokenizer, 12, 8, 0, 1, workers=workers, shuffle_buffer=10)  # noqa: E731
    reference = make()
    expected = take(reference, 17)  # 136 samples: more than two epochs of 62
    got, state = [], None
    for n in (5, 3, 9):  # two resumes; odd counts rotate the workers
        loader = make()
        if state is not None:
            torch.save(state, tmp_path / "state.pt")
            loader.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
        got += take(loader, n)
        state = loader.state_dict()
    assert len(got) == len(expected)
    for (xi, xt), (yi, yt) in zip(got, expected, strict=True):
        assert torch.equal(xt, yt) and torch.equal(xi, yi)
    assert loader.skipped == reference.skipped and reference.skipped["bad_caption"] == 2


def test_changed_layout_restarts_at_next_epoch(synthetic_shards, tokenizer, caplog):
    loader = TrainLoader(synthetic_shards, tokenizer, 8, 10, 0, 1, workers=0)
    take(loader, 8)  # into epoch 1
    grown = TrainLoader(synthetic_shards, tokenizer, 8, 10, 0, 2, workers=0)
    with caplog.at_level(logging.WARNING, logger="pretrain.data.pipeline"):
        grown.load_state_dict([loader.state_dict()])
    assert "cannot resume exactly" in caplog.text
    assert grown.state_dict()["positions"] == [{"epoch": 2, "consumed": 0, "skipped": {}, "phases": [4], "joins": [],
                                                    "later": []}]


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_samples_are_skipped_and_counted(tmp_path, tokenizer, workers):
    truncated_png = png_bytes(5, size=64)
    planted = [
        {"__key__": "garbage", "png": b"\x89PNG\r\n\x1a\n not really", "txt": b"x"},
        {"__key__": "truncated", "png": truncated_png[: len(truncated_png) // 2], "txt": b"x"},
        {"__key__": "bomb", "png": png_header_only(20000, 20000), "txt": b"x"},
        {"__key__": "big", "png": png_header_only(8000, 8000), "txt": b"x"},
        {"__key__": "empty", "png": png_bytes(1), "txt": b" \n"},
        {"__key__": "latin1", "png": png_bytes(1), "txt": "caf\xe9".encode("latin-1")},
        {"__key__": "nocaption", "png": png_bytes(1), "json": b"{}"},
        {"__key__": "noimage", "txt": b"x"},
    ]
    mixed = [good_sample(i) for i in range(9)]
    for j, sample in enumerate(planted):
        mixed.insert(1 + j, sample)
    shards = [write_tar(tmp_path / "mixed.tar", mixed)]
    cut = write_tar(tmp_path / "whole.tar", [good_sample(20 + i) for i in range(6)])
    data = open(cut, "rb").read()
    offsets = [data.find(b"item%05d.json" % (20 + i)) for i in range(6)]
    (tmp_path / "cut.tar").write_bytes(data[: offsets[3] + 512 + 100])  # in sample 3's first member
    shards.append(str(tmp_path / "cut.tar"))
    (tmp_path / "noise.tar").write_bytes(np.random.default_rng(0).bytes(5000))
    shards.append(str(tmp_path / "noise.tar"))

    loader = TrainLoader(shards, tokenizer, 8, 4, 0, 1, workers=workers, shuffle_buffer=6)
    seen = [i for _, texts in take(loader, 3) for i in ids(tokenizer, texts)]
    assert sorted(seen) == list(range(9)) + [20, 21, 22]
    assert loader.skipped == {"bad_image": 2, "too_large": 2, "empty_caption": 1, "bad_caption": 1,
                              "missing_caption": 1, "missing_image": 1, "corrupt_tar": 2}


def test_no_usable_sample_raises(tmp_path, tokenizer):
    (tmp_path / "noise.tar").write_bytes(b"\x01" * 3000)
    with pytest.raises(RuntimeError, match="no usable sample"):
        take(TrainLoader([str(tmp_path / "noise.tar")], tokenizer, 8, 2, 0, 1, workers=0), 1)


@pytest.mark.parametrize("workers", [0, 1])
def test_global_order_is_the_same_at_every_data_parallel_size(synthetic_shards, tokenizer, workers):
    """order=global: the ranks' slices of each batch, in rank order, are the single-rank global batch, and a
    state saved at dp_world=2 resumes exactly at dp_world=1 (and back)."""
    single = take(TrainLoader(synthetic_shards, tokenizer, 20, 8, 0, 1, workers=workers, order="global"), 4)
    halves = [TrainLoader(synthetic_shards, tokenizer, 20, 4, r, 2, workers=workers, order="global") for r in (0, 1)]
    its = [iter(h) for h in halves]
    for step in range(2):
        parts = [next(it) for it in its]
        assert torch.equal(torch.cat([p[0] for p in parts]), single[step][0])
        assert torch.equal(torch.cat([p[1] for p in parts]), single[step][1])
    resumed = TrainLoader(synthetic_shards, tokenizer, 20, 8, 0, 1, workers=workers, order="global")
    resumed.load_state_dict([h.state_dict() for h in halves])
    for step, (images, texts) in enumerate(take(resumed, 2), start=2):
        assert torch.equal(images, single[step][0]) and torch.equal(texts, single[step][1])
