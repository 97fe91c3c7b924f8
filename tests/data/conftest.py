"""Shared fixtures: a small tokenizer (trained once per session) and synthetic shards."""
from __future__ import annotations

import itertools

import pytest

from pretrain.data.tokenizer import Tokenizer, train_tokenizer, wordnet_texts

from .helpers import make_shards


@pytest.fixture(scope="session")
def tokenizer_model(tmp_path_factory):
    """512-piece vocab on 20k WordNet sentences plus captions: a few seconds, trained once per session."""
    captions = [f"picture number {i}" for i in range(500)] + ["a photo of a t-shirt", "a handwritten seven"]
    texts = itertools.chain(itertools.islice(wordnet_texts(), 20_000), captions)
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tokenizer", 512, max_sentences=20_000)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_model):
    return Tokenizer(tokenizer_model, context_length=16)


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory):
    """4 shards x 15 samples, each with a unique caption "picture number i"."""
    return make_shards(tmp_path_factory.mktemp("synthetic"), 4, 15)
