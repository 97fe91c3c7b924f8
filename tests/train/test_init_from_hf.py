"""model.init_from: {hf: DIR}, a Hugging Face CLIPModel folder (a small random CLIPModel and a CLIPTokenizer over
open_clip's bundled CLIP BPE, saved with save_pretrained; nothing is downloaded)."""
import dataclasses
import gzip
import json
import subprocess
import sys

import pytest
import torch
import yaml
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from eval.export import export_hf
from eval.load import load_checkpoint
from pretrain import checkpoint as ckpt
from pretrain.arch import ArchitectureError
from pretrain.data.clip_bpe import bundled_vocab
from pretrain.data.tokenizer import load_tokenizer
from pretrain.init_from import InitError, build, resolve
from pretrain.loss import ContrastiveLoss
from pretrain.model import CLIP
from pretrain.trainer import batch_fingerprint
from tests.conftest import ROOT, launch, metrics, rank_env
from tests.growth.helpers import TOL
from tests.growth.runs import first_batches, grown_model, saved_model, single_process_loss

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


def _logits(hf, images, texts):
    with torch.no_grad():
        return hf(input_ids=texts, pixel_values=images).logits_per_image


def test_hf_round_trip(tmp_path):
    """import HF -> our model -> export_hf -> CLIPModel.from_pretrained: the logits of the original CLIPModel, and
    CLIPTokenizer.from_pretrained reads the exported tokenizer as the source's."""
    theirs = hf_model(tmp_path / "hf")
    source = resolve({"hf": str(tmp_path / "hf")})
    tok = load_tokenizer(source.tokenizer, CONTEXT)
    ours = build(source).eval()
    export_hf(ours, tok, tmp_path / "out")
    back = CLIPModel.from_pretrained(tmp_path / "out").eval()
    texts = tok(CAPTIONS)
    images = torch.randn(len(CAPTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(2))
    expected = _logits(theirs, images, texts)
    assert (_logits(back, images, texts) - expected).abs().max().item() <= 1e-5
    with torch.no_grad():
        image, text, scale = ours(images, texts)
    assert ((scale * image @ text.t()) - expected).abs().max().item() <= 1e-4  # logits ~ 14: 1e-5 relative
    exported = CLIPTokenizer.from_pretrained(tmp_path / "out")
    assert torch.equal(exported(CAPTIONS, padding="max_length", truncation=True, max_length=CONTEXT,
                                return_tensors="pt")["input_ids"], texts)


def test_export_refuses_what_hf_cannot_express(tmp_path):
    """Heads added at a fixed width (head_dim != width / heads) and a shared encoder: one line, nothing written."""
    hf_model(tmp_path / "hf")
    arch = resolve({"hf": str(tmp_path / "hf")}).arch
    cases = {"vision.head_dim=32": dataclasses.replace(arch, vision=dataclasses.replace(arch.vision, heads=4,
                                                                                           head_dim=32)),
             "HF CLIPModel has no shared encoder": dataclasses.replace(
                 arch, shared=dataclasses.replace(arch.shared, layers=1, width=64, heads=2))}
    for named, bad in cases.items():
        with pytest.raises(ArchitectureError) as e:
            export_hf(CLIP(bad), None, tmp_path / named)
        assert named in str(e.value) and "\n" not in str(e.value) and not (tmp_path / named).exists()


def test_run_from_hf_trains_and_exports_hf(tmp_path, tiny_data):
    """2 ranks from an HF folder: the checkpoint carries its tokenizer.json (kind hf_clip); `python -m eval.export
    --format hf` writes a folder CLIPModel.from_pretrained reads, with our checkpoint's logits."""
    hf_model(tmp_path / "hf")
    cfg = {"model": {"init_from": {"hf": str(tmp_path / "hf")}}, "data": {"shards": tiny_data["shards"], "workers": 1},
           "train": {"steps": 2, "lr": 1e-3, "warmup": 1, "log_every": 1}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    proc = launch(run, {"shards": tiny_data["shards"], "tokenizer": str(tmp_path / "hf" / "tokenizer.json")},
                  config=str(tmp_path / "run.yaml"), small_model=False)
    assert "model.init_from: step 0 from" in proc.stdout + proc.stderr
    tag = run / "checkpoints" / "step00000002"
    assert ckpt.read_client_state(tag)["tokenizer_kind"] == "hf_clip"
    assert (tag / "tokenizer.model").read_bytes() == (tmp_path / "hf" / "tokenizer.json").read_bytes()
    out = tmp_path / "export"
    subprocess.run([sys.executable, "-m", "eval.export", "--checkpoint", str(run), "--out", str(out), "--format",
                    "hf"], check=True, capture_output=True, cwd=ROOT)
    loaded = load_checkpoint(run)
    texts = loaded.tokenizer(CAPTIONS)
    images = torch.randn(len(CAPTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        image, text, scale = loaded.model.eval()(images, texts)
    got = _logits(CLIPModel.from_pretrained(out).eval(), images, texts)
    assert (got - scale * image @ text.t()).abs().max().item() <= 1e-4  # fp32, logits ~ 14
    assert torch.equal(CLIPTokenizer.from_pretrained(out)(CAPTIONS, padding="max_length", truncation=True,
                                                          max_length=CONTEXT, return_tensors="pt")["input_ids"], texts)
    # a source folder that is no CLIP: pretrain/main.py stops with one line, exit 2
    _edit(tmp_path / "hf", lambda c: c.update(model_type="siglip"))
    bad = subprocess.run([sys.executable, "pretrain/main.py", "--config", str(tmp_path / "run.yaml"),
                          f"train.out_dir={tmp_path / 'bad'}"], cwd=ROOT, capture_output=True, text=True,
                         env=rank_env(), timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "model_type='siglip'" in bad.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def hf_tp2_growing_run(tiny_data, tmp_path_factory):
    """One 2-rank run from an HF folder at parallel.tp=2 (one data-parallel rank, ZeRO-1, fp32) that grows by a
    written move at step 2 (vision.heads*=2, PIM m = 1 from the last weights) and stays at tp=2: (run, hf folder,
    the source CLIPModel). Both tests below read it, so the two checks cost one deepspeed launch."""
    tmp = tmp_path_factory.mktemp("hf_tp2")
    theirs = hf_model(tmp / "hf")
    cfg = {"model": {"init_from": {"hf": str(tmp / "hf")}}, "data": {"shards": tiny_data["shards"], "workers": 0},
           "train": {"steps": 3, "save_every": 0, "lr": 1e-3, "warmup": 2, "log_every": 1}}
    (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp / "run"
    launch(run, {"shards": tiny_data["shards"], "tokenizer": str(tmp / "hf" / "tokenizer.json")},
           "growth.at_steps=[2]", "growth.moves=[vision.heads*=2]", "growth.pim_source=last",
           "train.fingerprints=true", config=str(tmp / "run.yaml"), small_model=False,
           ds_config="ds_configs/zero1.json", extra_args=("--tp", "2"))
    return run, tmp / "hf", theirs


def test_first_loss_at_tp2_equals_hf(hf_tp2_growing_run):
    """At parallel.tp=2 the run's first loss is CLIPModel(return_loss=True).loss of the source model on the batch
    the run took (fp32, 1e-5)."""
    run, _, theirs = hf_tp2_growing_run
    record = metrics(run)[1]
    (images, texts), = first_batches(None, run, dp=1)
    assert record["batches"] == [[batch_fingerprint(images, texts)]] * 2  # both TP ranks took this batch
    with torch.no_grad():
        reference = theirs(input_ids=texts, pixel_values=images, return_loss=True).loss.item()
    assert abs(record["loss"] - reference) <= 1e-5, (record["loss"], reference)
    assert record["loss"] > 0.1


def test_run_from_hf_grows_preserving_the_loss(hf_tp2_growing_run):
    """The run from the HF folder grows at step 2 (PIM m = 1, the default): the grown model's loss on the batch
    the run takes next is the saved source model's loss and the run's own step-3 loss (1e-5), and the grown
    checkpoints keep the HF tokenizer (kind hf_clip, the source's tokenizer.json byte for byte)."""
    run, hf, _ = hf_tp2_growing_run
    grown_tag = run / "grown" / "step2" / "step00000002"
    client = ckpt.read_client_state(grown_tag)
    entry = client["growth_history"][-1]
    assert (entry["move"], entry["layout"], entry["pim"]["source"]) == ("vision.heads*=2", {"tp": 2, "pp": 1},
                                                                        "last")
    assert client["tokenizer_kind"] == "hf_clip" and client["architecture"]["vision"]["heads"] == 4
    assert (grown_tag / "tokenizer.model").read_bytes() == (hf / "tokenizer.json").read_bytes()
    batches = first_batches(grown_tag, run, dp=1)
    record = metrics(run)[3]
    assert record["batches"] == [[batch_fingerprint(*batches[0])]] * 2
    grown = single_process_loss(grown_model(grown_tag), batches)
    source = saved_model(run / "checkpoints" / "step00000002")
    assert source.arch.vision.heads == 2
    assert abs(single_process_loss(source, batches) - grown) <= TOL
    assert abs(record["loss"] - grown) <= TOL
    final_tag = run / "checkpoints" / "step00000003"
    final = ckpt.read_client_state(final_tag)
    assert final["tokenizer_kind"] == "hf_clip" and final["architecture"]["vision"]["heads"] == 4
    assert (final_tag / "tokenizer.model").read_bytes() == (hf / "tokenizer.json").read_bytes()
