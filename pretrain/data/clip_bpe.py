"""OpenCLIP's own tokenizer behind our Tokenizer interface: open_clip's SimpleTokenizer (CLIP's byte-level BPE,
ftfy + html unescape + lower-casing, <start_of_text> 49406 and <end_of_text> 49407, pad 0, a long text cut to
context - 1 tokens and ended by eot) over a `bpe_simple_vocab_16e6.txt.gz` merges file. open_clip ships that file
inside its package (`bundled_vocab()`); nothing is downloaded. eot is the largest id, so the text tower's argmax
pooling finds it, as with our SentencePiece ids.

A checkpoint carries this file as its `tokenizer.model` (the bytes of the .gz, unchanged) and
`tokenizer_kind: clip_bpe` in its client state; `pretrain.data.tokenizer.load_tokenizer` tells the two kinds apart
by the file's content.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

import torch

KIND = "clip_bpe"
GZIP_MAGIC = b"\x1f\x8b"


def bundled_vocab() -> Path:
    """open_clip's own merges file, inside the installed package."""
    from open_clip.tokenizer import default_bpe
    return Path(default_bpe())


def is_clip_bpe(data: bytes) -> bool:
    """A gzip file whose first line is a CLIP BPE merges header ('"bpe_simple_vocab_16e6.txt#version: 0.2')."""
    if not data.startswith(GZIP_MAGIC):
        return False
    try:
        head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, 256)
    except zlib.error:
        return False
    return b"#version:" in head.split(b"\n", 1)[0]


class ClipBpeTokenizer:
    kind = KIND

    def __init__(self, model_path: str | os.PathLike, context_length: int = 77, data: bytes | None = None):
        from .tokenizer import TokenizerError, tokenizer_file  # the one error type and preamble of every kind
        self.model_path, data = tokenizer_file(model_path, context_length, data)
        self.context_length = context_length
        if not is_clip_bpe(data):
            raise TokenizerError(f"{self.model_path}: not a CLIP BPE vocabulary (a gzip file like open_clip's "
                                 f"bpe_simple_vocab_16e6.txt.gz)")
        self.sha256 = hashlib.sha256(data).hexdigest()
        from open_clip.tokenizer import SimpleTokenizer
        try:
            self._tok = SimpleTokenizer(bpe_path=str(self.model_path), context_length=context_length)
        except (OSError, EOFError, gzip.BadGzipFile, ValueError) as e:
            raise TokenizerError(f"{self.model_path}: unreadable CLIP BPE vocabulary ({e})") from None
        self.pad_id, self.sot_id, self.eot_id = 0, self._tok.sot_token_id, self._tok.eot_token_id
        self.vocab_size = self._tok.vocab_size
        if self.eot_id != self.vocab_size - 1:
            raise TokenizerError(f"{self.model_path}: end-of-text id {self.eot_id} is not the largest id "
                                 f"({self.vocab_size - 1}); the text tower pools at the largest id")

    def encode(self, text: str) -> list[int]:
        """The BPE ids of text, without sot/eot/padding."""
        return self._tok.encode(text)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids if 0 < int(i) < self.sot_id])

    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        """int64 [B, context_length], exactly open_clip's tokenizer."""
        return self._tok(texts, context_length=self.context_length)
