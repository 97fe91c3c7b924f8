import hashlib
import itertools

import torch

from pretrain.data.tokenizer import Tokenizer, main, train_tokenizer, wordnet_texts


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
    a = Tokenizer(train_tokenizer(texts, tmp_path / "a", 300, max_sentences=2000))
    b = Tokenizer(train_tokenizer(texts, tmp_path / "b", 300, max_sentences=2000))
    c = Tokenizer(train_tokenizer(texts, tmp_path / "c", 320, max_sentences=2000))
    assert a.sha256 == b.sha256
    assert c.sha256 != a.sha256 != tokenizer.sha256
    assert c.vocab_size == 320 and c.eot_id == 319


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
