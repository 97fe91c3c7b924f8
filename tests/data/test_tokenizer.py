import hashlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sentencepiece import sentencepiece_model_pb2

from pretrain.data.tokenizer import WORDNET_FILES, Tokenizer, main, train_tokenizer, wordnet_texts

ROOT = Path(__file__).resolve().parents[2]


def test_id_layout(tokenizer):
    assert tokenizer.vocab_size == 512
    assert (tokenizer.pad_id, tokenizer.sot_id, tokenizer.eot_id) == (0, 510, 511)
    ids = tokenizer(["a photo of a t-shirt", "seven", ""])
    assert ids.dtype == torch.int64 and ids.shape == (3, 16)
    for row in ids:
        end = int(row.argmax())
        assert row[0] == tokenizer.sot_id and row[end] == tokenizer.eot_id
        assert (row[1:end] > 0).all() and (row[1:end] < tokenizer.sot_id).all()
        assert (row[end + 1 :] == 0).all()
    assert ids[2, :3].tolist() == [tokenizer.sot_id, tokenizer.eot_id, 0]


def test_pieces_are_shifted_sentencepiece_ids_and_round_trip(tokenizer):
    text = "a photo of a t-shirt"
    row = tokenizer([text])[0]
    pieces = tokenizer.encode(text)
    assert row[1 : len(pieces) + 1].tolist() == pieces
    assert [p - 1 for p in pieces] == tokenizer._sp.encode(text)
    assert tokenizer.decode(row.tolist()) == text


def test_truncation_keeps_eot(tokenizer):
    text = " ".join(["picture number 12345"] * 20)
    row = Tokenizer(tokenizer.model_path, context_length=8)([text])[0]
    assert row.tolist() == [tokenizer.sot_id] + tokenizer.encode(text)[:6] + [tokenizer.eot_id]
    assert int(row.argmax()) == 7


def test_lowercase_and_whitespace_normalised(tokenizer):
    assert torch.equal(tokenizer(["A  Photo\tOF a\nT-SHIRT "]), tokenizer(["a photo of a t-shirt"]))


def test_sha256_is_the_model_file_and_training_is_deterministic(tokenizer, tmp_path):
    assert tokenizer.sha256 == hashlib.sha256(tokenizer.model_path.read_bytes()).hexdigest()
    texts = list(itertools.islice(wordnet_texts(), 3000))

    def sha(name, texts=texts, vocab=300, **kw):
        return Tokenizer(train_tokenizer(texts, tmp_path / name, vocab, **{"max_sentences": 2000, **kw})).sha256

    a = sha("a")
    assert sha("b") == a
    assert sha("reversed", texts[::-1]) == a  # the sample depends on the texts, not on their order
    assert sha("seed1", seed=1) != a  # 2000 of 3000: the (seeded) sample is taken
    assert sha("all", max_sentences=3000) == sha("cap_above_count", max_sentences=10**6)  # no sampling at all
    c = Tokenizer(train_tokenizer(texts, tmp_path / "c", 320, max_sentences=2000))
    assert c.sha256 != a != tokenizer.sha256
    assert c.vocab_size == 320 and c.eot_id == 319
    spec = sentencepiece_model_pb2.ModelProto.FromString(c.model_path.read_bytes()).trainer_spec
    assert (spec.num_threads, spec.input_sentence_size, spec.shuffle_input_sentence) == (1, 0, False)


def _small_wordnet(root: Path, lines: int = 900) -> Path:
    """The first `lines` lines (license header included) of each WordNet data file."""
    root.mkdir()
    for name in WORDNET_FILES:
        with open(Path("/usr/share/wordnet") / name, encoding="utf-8", errors="replace") as f:
            (root / name).write_text("".join(itertools.islice(f, lines)), encoding="utf-8")
    return root


def test_cli_model_is_byte_identical_across_processes_and_machines(tmp_path):
    """Two processes with different hash seeds, thread env and (patched) core counts, through the sampling path."""
    wordnet = _small_wordnet(tmp_path / "wordnet")
    count = sum(1 for _ in wordnet_texts(wordnet))
    cap = count * 2 // 3
    assert 1000 < cap < count
    args = ["--wordnet", str(wordnet), "--vocab", "300", "--max-sentences", str(cap), "--out"]
    runs = {
        "a": ([sys.executable, "-m", "pretrain.data.tokenizer"], {"PYTHONHASHSEED": "1", "OMP_NUM_THREADS": "1"}),
        # another "machine": more cores and threads, another hash seed
        "b": ([sys.executable, "-c", "import os, sys; os.cpu_count = lambda: 7; "
               "from pretrain.data.tokenizer import main; main(sys.argv[1:])"],
              {"PYTHONHASHSEED": "2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}),
    }
    for name, (cmd, env) in runs.items():
        proc = subprocess.run([*cmd, *args, str(tmp_path / name)], cwd=ROOT, env={**os.environ, **env},
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
    for suffix in ("model", "vocab"):
        a, b = ((tmp_path / name / f"tokenizer.{suffix}").read_bytes() for name in runs)
        assert a == b, suffix


def test_wordnet_texts_are_glosses_and_examples():
    texts = list(itertools.islice(wordnet_texts(), 2000))
    assert texts[0].startswith("that which is perceived")
    assert all("|" not in t and not t[:8].isdigit() and not t.startswith('"') for t in texts)
    assert any(" " in t and t[0].islower() for t in texts)


def test_cli_reads_shard_captions(synthetic_shards, tmp_path):
    shard_dir = str(synthetic_shards[0]).rsplit("/", 1)[0]
    spec = shard_dir + "/shard-{000000..000003}.tar"
    path = main(["--shards", spec, "--vocab", "64", "--out", str(tmp_path / "tok")])
    assert path == tmp_path / "tok" / "tokenizer.model" and (tmp_path / "tok" / "tokenizer.vocab").exists()
    tok = Tokenizer(path)
    assert tok.vocab_size == 64
    assert tok.decode(tok(["picture number 7"])[0].tolist()) == "picture number 7"
    assert not list((tmp_path / "tok").glob("*.tmp*"))


def test_a_file_that_is_not_a_tokenizer_is_one_line_naming_it(tmp_path):
    """The garbage-tokenizer case of issue 20: sentencepiece's raw 'ParseFromArray' error becomes one line that
    names the file, and python -m eval's checkpoint loader turns it into a CheckpointError (exit 2)."""
    from eval.load import _tokenizer
    from pretrain.arch import Architecture
    from pretrain.checkpoint import CheckpointError
    from pretrain.data.tokenizer import Tokenizer, TokenizerError
    garbage = tmp_path / "tokenizer.model"
    garbage.write_bytes(b"\x00\x01 this is not a sentencepiece model \xff" * 40)
    with pytest.raises(TokenizerError, match="not a SentencePiece model") as e:
        Tokenizer(garbage)
    assert str(garbage) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(TokenizerError, match="cannot read"):
        Tokenizer(tmp_path)  # a folder
    with pytest.raises(CheckpointError, match="not a SentencePiece model") as e:
        _tokenizer(garbage, Architecture(), tmp_path / "run")
    assert str(garbage) in str(e.value) and "\n" not in str(e.value)
