"""SentencePiece tokenizer for the text tower, trained offline on WordNet glosses and our own captions.

Id layout (the model relies on it). With n = the SentencePiece model's piece count:

    0          pad (SentencePiece is trained without a pad piece)
    1 .. n     SentencePiece ids 0 .. n-1, shifted by one (SentencePiece's id 0 is <unk>)
    n + 1      start of text (sot)
    n + 2      end of text (eot) == vocab_size - 1, the largest id: the text tower pools at argmax, as OpenCLIP does

A text becomes [sot] + pieces + [eot], padded with 0 to context_length; a long text loses its last pieces and
keeps eot as the final token. Texts are lower-cased and whitespace-normalised first. `train_tokenizer`'s
vocab_size is this full vocab_size (pieces + pad + sot + eot).

Reproducibility: the same texts (as a multiset: their order does not matter), vocab_size, model_type,
max_sentences and seed give a byte-identical .model and .vocab in any process, with any PYTHONHASHSEED, thread
environment or core count, for a given sentencepiece version. SentencePiece's own sampling
(input_sentence_size + shuffle_input_sentence) is never used -- it gave a different model in every process --
and its thread count is fixed (NUM_THREADS), since the count is written into the model and changes the
unigram trainer's sums. Instead `sample_texts` sorts the normalised texts and, when there are more than
max_sentences, keeps a random.Random(seed) subset (only random(), whose sequence for an int seed Python
guarantees across versions).

    python -m pretrain.data.tokenizer --shards SPEC --wordnet /usr/share/wordnet --vocab 4096 --out DIR
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import re
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import sentencepiece as spm
import torch

from .tario import TarCorrupt, tar_members

SPECIALS = 3  # pad, sot, eot
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
# SentencePiece trainer settings that must not depend on the machine. One thread: BPE uses threads only to
# normalise the input (the full 4096 vocab trains in a few seconds either way).
NUM_THREADS = 1
MAX_SENTENCE_BYTES = 4192  # SentencePiece's default max_sentence_length: it skips longer sentences
UNK_CHAR = "\u2585"  # SentencePiece skips training sentences containing its internal unk marker


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def sample_texts(texts: Iterable[str], max_sentences: int = 200_000, seed: int = 0) -> list[str]:
    """The training sentences: normalised texts that SentencePiece would keep, sorted (so the result does not
    depend on the input order); if more than max_sentences (> 0), a random.Random(seed) subset of that size,
    still in sorted order."""
    if max_sentences < 0:
        raise ValueError("max_sentences must be >= 0 (0: no cap)")
    texts = sorted(t for t in map(normalize, texts)
                   if t and UNK_CHAR not in t and len(t.encode("utf-8")) <= MAX_SENTENCE_BYTES)
    if not max_sentences or len(texts) <= max_sentences:
        return texts
    rng = random.Random(seed)
    keys = [rng.random() for _ in texts]
    chosen = sorted(sorted(range(len(texts)), key=keys.__getitem__)[:max_sentences])  # stable sort: ties by index
    return [texts[i] for i in chosen]


def train_tokenizer(texts: Iterable[str], out_prefix: str | os.PathLike, vocab_size: int, model_type: str = "bpe",
                    max_sentences: int = 200_000, seed: int = 0) -> Path:
    """Train on `sample_texts(texts, max_sentences, seed)` (all texts when max_sentences is 0 or at least their
    count); writes out_prefix.model and out_prefix.vocab atomically and returns the .model path. The same texts
    (in any order) and arguments give byte-identical files in any process and on any machine (see the module
    docstring); the model goes through model_writer, so no output path is baked into it."""
    sentences = sample_texts(texts, max_sentences, seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size - SPECIALS,
        model_type=model_type,
        byte_fallback=False,
        character_coverage=1.0,  # keep every character seen: the default drops rare digits such as "7"
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
        input_sentence_size=0,  # no sampling inside SentencePiece: its sample differs from process to process
        shuffle_input_sentence=False,
        max_sentence_length=MAX_SENTENCE_BYTES,
        num_threads=NUM_THREADS,  # recorded in the model; a fixed count keeps it off the machine
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size()))
    model_path = Path(f"{out_prefix}.model")
    _write_atomic(Path(f"{out_prefix}.vocab"), vocab.encode("utf-8"))
    _write_atomic(model_path, model.getvalue())
    return model_path


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def wordnet_texts(root: str | os.PathLike = "/usr/share/wordnet") -> Iterator[str]:
    """Glosses and example sentences (the part after '|' of each data.* line, split at '; "')."""
    for name in WORDNET_FILES:
        with open(Path(root) / name, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:  # license header
                    continue
                for part in re.split(r';\s*(?=")', line.split("|", 1)[1]):
                    part = part.strip().strip('"').strip()
                    if part:
                        yield part


def shard_captions(shards: Iterable[str]) -> Iterator[str]:
    """The .txt members of tar shards; undecodable members and the rest of damaged shards are left out."""
    for shard in shards:
        try:
            with open(shard, "rb") as f:
                for member in tar_members(f):
                    if member["fname"].endswith(".txt"):
                        try:
                            yield member["data"].decode("utf-8")
                        except UnicodeDecodeError:
                            continue
        except (TarCorrupt, OSError):
            continue


class TokenizerError(ValueError):
    """A tokenizer file that cannot be read, or is neither a SentencePiece model nor a CLIP BPE vocabulary: one
    line naming the file."""


def load_tokenizer(path: str | os.PathLike, context_length: int = 77):
    """The tokenizer in `path`, by its content: our SentencePiece .model (`Tokenizer`) or a CLIP BPE merges file
    such as open_clip's bpe_simple_vocab_16e6.txt.gz (`clip_bpe.ClipBpeTokenizer`) or a Hugging Face CLIP
    tokenizer.json (`hf_tokenizer.HfClipTokenizer`). All have `kind`,
    `model_path`, `sha256`, `vocab_size`, `context_length` and `__call__(texts) -> [N, context] int64`; anything
    else is a TokenizerError naming the file. Every reader of a run's tokenizer goes through here."""
    path = Path(path)
    data = _read(path)
    from .clip_bpe import ClipBpeTokenizer, is_clip_bpe
    if is_clip_bpe(data):
        return ClipBpeTokenizer(path, context_length, data)
    from .hf_tokenizer import HfClipTokenizer, is_hf_tokenizer_json
    if is_hf_tokenizer_json(data):
        return HfClipTokenizer(path, context_length, data)
    return Tokenizer(path, context_length, data)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read the tokenizer ({e.strerror or e})") from None


def tokenizer_file(model_path: str | os.PathLike, context_length: int, data: bytes | None) -> tuple[Path, bytes]:
    """What every tokenizer kind does first: check the context length, and read the file unless its bytes are
    given (load_tokenizer reads them once to tell the kinds apart)."""
    if context_length < 2:
        raise ValueError("context_length must leave room for sot and eot")
    path = Path(model_path)
    return path, _read(path) if data is None else data


class Tokenizer:
    kind = "sentencepiece"

    def __init__(self, model_path: str | os.PathLike, context_length: int = 77, data: bytes | None = None):
        self.model_path, data = tokenizer_file(model_path, context_length, data)
        self.context_length = context_length
        self.sha256 = hashlib.sha256(data).hexdigest()
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=data)
        except (RuntimeError, TypeError) as e:  # sentencepiece: "INTERNAL: ... ParseFromArray" and the like
            reason = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
            raise TokenizerError(f"{self.model_path}: not a SentencePiece model nor a CLIP BPE vocabulary "
                                 f"({len(data)} bytes; sentencepiece says: {reason})") from None
        pieces = self._sp.get_piece_size()
        self.pad_id, self.sot_id, self.eot_id, self.vocab_size = 0, pieces + 1, pieces + 2, pieces + SPECIALS

    def encode(self, text: str) -> list[int]:
        """Our ids of the pieces of text, without sot/eot/padding."""
        return [i + 1 for i in self._sp.encode(normalize(text))]

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) - 1 for i in ids if 0 < int(i) < self.sot_id])

    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        """int64 [B, context_length]."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        room = self.context_length - 2
        for row, ids in enumerate(self._sp.encode([normalize(t) for t in texts])):
            ids = ids[:room]
            out[row, 0] = self.sot_id
            out[row, 1 : len(ids) + 1] = np.asarray(ids, dtype=np.int64) + 1
            out[row, len(ids) + 1] = self.eot_id
        return torch.from_numpy(out)


def main(argv: list[str] | None = None) -> Path:
    from .manifest import load_shards

    p = argparse.ArgumentParser(prog="python -m pretrain.data.tokenizer", description="train the tokenizer")
    p.add_argument("--shards", default=None, help="shard spec whose captions join the training text")
    p.add_argument("--wordnet", default=None, help="WordNet root, e.g. /usr/share/wordnet")
    p.add_argument("--vocab", type=int, default=4096, help="full vocab size (pieces + pad + sot + eot)")
    p.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"])
    p.add_argument("--max-sentences", type=int, default=200_000,
                   help="train on a seeded sample of this many texts when there are more (0: all)")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    if not args.shards and not args.wordnet:
        p.error("give --shards and/or --wordnet")

    def texts():
        if args.wordnet:
            yield from wordnet_texts(args.wordnet)
        if args.shards:
            yield from shard_captions(load_shards(args.shards))

    args.out.mkdir(parents=True, exist_ok=True)
    path = train_tokenizer(texts(), args.out / "tokenizer", args.vocab, args.model_type, args.max_sentences)
    tok = Tokenizer(path)
    print(f"wrote {path} (vocab_size {tok.vocab_size}, sha256 {tok.sha256[:12]})")
    return path


if __name__ == "__main__":
    main()
