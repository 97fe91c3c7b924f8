"""A Hugging Face CLIP folder's tokenizer behind our Tokenizer interface: its `tokenizer.json` (the one file
`CLIPTokenizer.save_pretrained` writes in transformers 5, and that hub CLIP folders carry beside vocab.json and
merges.txt) run by `transformers.CLIPTokenizer` itself, so the ids are CLIPTokenizer's: NFC + whitespace + lower-case
normalisation, byte-level BPE, <|startoftext|> and <|endoftext|> around the text, a long text cut to context - 1
tokens and ended by <|endoftext|>, padded with CLIPTokenizer's pad token (<|endoftext|>; our text tower attends
causally and pools at the first largest id, so what follows the first eot never matters).

A checkpoint carries the tokenizer.json as its `tokenizer.model` (bytes unchanged) and `tokenizer_kind: hf_clip`.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

KIND = "hf_clip"


def is_hf_tokenizer_json(data: bytes) -> bool:
    """A `tokenizers` tokenizer.json: a JSON object with a "model" mapping (BPE, WordPiece, ...)."""
    if not data.lstrip()[:1] == b"{":
        return False
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "type" in obj["model"]


class HfClipTokenizer:
    kind = KIND

    def __init__(self, model_path: str | os.PathLike, context_length: int = 77, data: bytes | None = None):
        from .tokenizer import TokenizerError, tokenizer_file  # the one error type and preamble of every kind
        self.model_path, data = tokenizer_file(model_path, context_length, data)
        self.context_length = context_length
        if not is_hf_tokenizer_json(data):
            raise TokenizerError(f"{self.model_path}: not a Hugging Face tokenizer.json")
        self.sha256 = hashlib.sha256(data).hexdigest()
        from tokenizers import Tokenizer as Backend
        from transformers import CLIPTokenizer
        try:
            self._tok = CLIPTokenizer(tokenizer_object=Backend.from_str(data.decode("utf-8")))
        except Exception as e:  # tokenizers raises its own Exception subclasses for a malformed file
            raise TokenizerError(f"{self.model_path}: unreadable tokenizer.json ({str(e).splitlines()[0]})") from None
        self.pad_id, self.sot_id, self.eot_id = self._tok.pad_token_id, self._tok.bos_token_id, self._tok.eos_token_id
        self.vocab_size = len(self._tok)
        if self.sot_id is None or self.eot_id is None:
            raise TokenizerError(f"{self.model_path}: no <|startoftext|> / <|endoftext|> token (not a CLIP tokenizer)")
        if self.eot_id != self.vocab_size - 1:
            raise TokenizerError(f"{self.model_path}: end-of-text id {self.eot_id} is not the largest id "
                                 f"({self.vocab_size - 1}); the text tower pools at the largest id")

    def encode(self, text: str) -> list[int]:
        """The BPE ids of text, without sot/eot/padding."""
        return self._tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids if int(i) not in (self.sot_id, self.eot_id)])

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """The tokenizer as CLIPTokenizer.save_pretrained writes it (tokenizer.json, tokenizer_config.json)."""
        self._tok.save_pretrained(folder)

    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        """int64 [B, context_length], exactly CLIPTokenizer(padding="max_length", truncation=True)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self._tok(texts, padding="max_length", truncation=True, max_length=self.context_length,
                         return_tensors="pt")["input_ids"].long()
