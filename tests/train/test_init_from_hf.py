"""model.init_from: {hf: DIR}, a Hugging Face CLIPModel folder (a small random CLIPModel and a CLIPTokenizer over
open_clip's bundled CLIP BPE, saved with save_pretrained; nothing is downloaded)."""
import gzip
import json

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from pretrain.data.clip_bpe import bundled_vocab
from pretrain.data.tokenizer import load_tokenizer
from pretrain.init_from import InitError, build, resolve
from pretrain.loss import ContrastiveLoss

CONTEXT = 16
CAPTIONS = ["a photo of a t-shirt", "a dress, café crème", "‘curly’ “quotes” &amp; html", "ﬁne Ａ full-width",
            "emoji 🐶 dog", "a pullover " * 40, "Ünïcödé ÅNGSTRÖM", "  spaces\tand\nnewlines  "]
TOWER = {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 2, "num_hidden_layers": 2,
         "hidden_act": "gelu"}


def hf_tokenizer_files(folder):
    """vocab.json + merges.txt of OpenAI's CLIP BPE (the bundled merges; HF's special-token names), and the
    tokenizer.json CLIPTokenizer.save_pretrained writes from them."""
    lines = gzip.open(bundled_vocab()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    from open_clip.tokenizer import SimpleTokenizer
    vocab = dict(SimpleTokenizer().encoder)
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = vocab.pop("<start_of_text>"), vocab.pop("<end_of_text>")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n")
    CLIPTokenizer.from_pretrained(folder).save_pretrained(folder)


def hf_model(folder, seed=0, **text):
    """A random CLIPModel (every weight perturbed) saved to folder with its tokenizer."""
    config = CLIPConfig(text_config={**TOWER, "max_position_embeddings": CONTEXT, "vocab_size": 49408, **text},
                        vision_config={**TOWER, "image_size": 32, "patch_size": 8}, projection_dim=32)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder)
    hf_tokenizer_files(folder)
    return model


def test_first_loss_equals_hf(tmp_path):
    """Our loss on a batch = CLIPModel(return_loss=True).loss, same weights and CLIPTokenizer's tokens, to 1e-5."""
    theirs = hf_model(tmp_path / "hf")
    source = resolve({"hf": str(tmp_path / "hf")})
    assert source.tokenizer.name == "tokenizer.json" and source.arch.text.context == CONTEXT
    assert (source.arch.vision.heads, source.arch.vision.width, source.arch.embed_dim) == (2, 64, 32)
    tok = load_tokenizer(source.tokenizer, CONTEXT)
    texts = tok(CAPTIONS)
    reference_tok = CLIPTokenizer.from_pretrained(tmp_path / "hf")
    expected = reference_tok(CAPTIONS, padding="max_length", truncation=True, max_length=CONTEXT,
                             return_tensors="pt")["input_ids"]
    assert tok.kind == "hf_clip" and torch.equal(texts, expected)
    assert texts[5, -1] == tok.eot_id == 49407  # the over-long caption is cut and still ends with eot
    ours = build(source).eval()
    images = torch.randn(len(CAPTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = ContrastiveLoss(None, use_triton=False)(ours(images, texts)).item()
        reference = theirs(input_ids=texts, pixel_values=images, return_loss=True).loss.item()
    assert abs(loss - reference) <= 1e-5, (loss, reference)
    assert loss > 0.1


@pytest.mark.parametrize("change, named", [
    (lambda d: (d / "tokenizer.json").unlink(), "has no tokenizer.json"),
    (lambda d: _edit(d, lambda c: c.update(model_type="siglip")), "model_type='siglip'"),
    (lambda d: _edit(d, lambda c: c["text_config"].update(hidden_act="quick_gelu")),
     "text_config.hidden_act='quick_gelu'"),
    (lambda d: (d / "model.safetensors").unlink(), "has no weights"),
], ids=["no_tokenizer", "model_type", "quick_gelu", "no_weights"])
def test_bad_hf_folder_is_one_line(tmp_path, change, named):
    folder = tmp_path / "hf"
    hf_model(folder)
    change(folder)
    with pytest.raises(InitError) as e:
        build(resolve({"hf": str(folder)}))
    assert named in str(e.value) and "\n" not in str(e.value), str(e.value)


def _edit(folder, fn):
    config = json.loads((folder / "config.json").read_text())
    fn(config)
    (folder / "config.json").write_text(json.dumps(config))
