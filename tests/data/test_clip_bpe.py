"""The CLIP BPE tokenizer is open_clip's own, byte for byte, and the factory tells the two kinds apart."""
import gzip

import open_clip
import pytest
import torch

from pretrain.data.clip_bpe import ClipBpeTokenizer, bundled_vocab
from pretrain.data.tokenizer import Tokenizer, TokenizerError, load_tokenizer

CAPTIONS = [
    "a photo of a cat",
    "A PHOTO of   a Dog!!  ",
    "naïve café — crème brûlée, 東京タワー and emoji 🐱🚀",
    "&amp; html &lt;escaped&gt; text",
    "",
    "word " * 200,  # over-long: cut, and eot kept as the last token
    "supercalifragilisticexpialidocious " * 30,
]


def test_same_tokens_as_open_clip():
    tok = load_tokenizer(bundled_vocab())
    assert isinstance(tok, ClipBpeTokenizer) and tok.kind == "clip_bpe"
    ours = tok(CAPTIONS)
    assert ours.dtype == torch.int64 and ours.shape == (len(CAPTIONS), 77)
    assert torch.equal(ours, open_clip.tokenize(CAPTIONS))
    assert torch.equal(ours, open_clip.get_tokenizer("ViT-B-32")(CAPTIONS))
    assert tok.vocab_size == 49408 and tok.eot_id == 49407 == int(ours.max())
    assert int(ours[5, -1]) == tok.eot_id  # the long caption ends with eot


def test_other_context_length():
    tok = load_tokenizer(bundled_vocab(), 16)
    assert torch.equal(tok(CAPTIONS), open_clip.tokenize(CAPTIONS, context_length=16))


def test_factory_picks_sentencepiece(tokenizer_model):
    tok = load_tokenizer(tokenizer_model, 16)
    assert type(tok) is Tokenizer and tok.kind == "sentencepiece"
    assert torch.equal(tok(CAPTIONS), Tokenizer(tokenizer_model, 16)(CAPTIONS))


def test_copied_vocab_keeps_its_kind(tmp_path):
    """A checkpoint holds the file as tokenizer.model: the content, not the name, decides."""
    copy = tmp_path / "tokenizer.model"
    copy.write_bytes(bundled_vocab().read_bytes())
    tok = load_tokenizer(copy)
    assert tok.kind == "clip_bpe" and tok.sha256 == load_tokenizer(bundled_vocab()).sha256


def test_other_files_are_one_line_naming_them(tmp_path):
    other_gz = tmp_path / "other.txt.gz"
    other_gz.write_bytes(gzip.compress(b"hello\nworld\n"))
    text = tmp_path / "vocab.txt"
    text.write_text("not a tokenizer\n")
    for path in (other_gz, text, tmp_path / "missing.model"):
        with pytest.raises(TokenizerError) as e:
            load_tokenizer(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
