"""model.init_from: a run starts from an OpenCLIP model the user has (real open_clip, a tiny custom config)."""
import json
import subprocess
import sys

import open_clip
import pytest
import torch
import yaml
from open_clip.loss import ClipLoss

from pretrain.data.clip_bpe import bundled_vocab
from pretrain.data.tokenizer import load_tokenizer
from pretrain.init_from import build, resolve
from pretrain.loss import ContrastiveLoss
from pretrain.model.openclip import checked_arch_from_openclip_config
from tests.conftest import ROOT, launch, metrics, rank_env
from tests.growth.helpers import TOL
from tests.growth.runs import first_batches, grown_model, saved_model, single_process_loss

# a tiny OpenCLIP ViT: open_clip builds it from this config; nothing is downloaded
TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
CAPTIONS = ["a photo of a t-shirt", "a photo of a sneaker", "an ankle boot", "a black and white photo of a bag",
            "trousers", "a dress, café crème", "a pullover " * 40, "sandal"]


def openclip_model(tmp_path, cfg=TINY, suffix=".pt", seed=0):
    """A random open_clip CLIP from a model-config .json, its weights saved to disk: (model, json, weights)."""
    config = tmp_path / f"tiny-{seed}.json"
    config.write_text(json.dumps(cfg))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = open_clip.create_model(config.stem).eval()
    weights = tmp_path / f"tiny-{seed}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(model.state_dict(), str(weights))
    else:
        torch.save(model.state_dict(), weights)
    return model, config, weights


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_first_loss_equals_open_clip(tmp_path, suffix):
    """Our loss on a batch = open_clip's ClipLoss, same weights and tokens, to 1e-5 (fp32, one device)."""
    theirs, config, weights = openclip_model(tmp_path, suffix=suffix)
    source = resolve({"openclip": str(config), "weights": str(weights)})
    assert source.tokenizer == bundled_vocab() and source.arch.text.context == 16
    ours = build(source).eval()
    texts = load_tokenizer(source.tokenizer, source.arch.text.context)(CAPTIONS)
    assert torch.equal(texts, open_clip.get_tokenizer(config.stem)(CAPTIONS))
    images = torch.randn(len(CAPTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = ContrastiveLoss(None, use_triton=False)(ours(images, texts))
        image, text, scale = theirs(images, texts)
        reference = ClipLoss()(image, text, scale)
    assert abs(loss.item() - reference.item()) <= 1e-5, (loss.item(), reference.item())
    assert loss.item() > 0.1  # a real loss of random features, not a degenerate zero


def test_bundled_config_is_read_without_download():
    """ViT-B-32 from open_clip's own bundled configs, its defaults filled in (text heads 8, vision head width 64)."""
    arch = checked_arch_from_openclip_config(open_clip.get_model_config("ViT-B-32"), "ViT-B-32")
    assert (arch.vision.layers, arch.vision.width, arch.vision.heads, arch.vision.patch) == (12, 768, 12, 32)
    assert (arch.text.width, arch.text.heads, arch.text.vocab, arch.text.context, arch.embed_dim) == \
        (512, 8, 49408, 77, 512)


def _config(tmp_path, data, init_from: dict, name="run.yaml"):
    cfg = {"model": {"init_from": init_from}, "data": {"shards": data["shards"], "workers": 1},
           "train": {"steps": 4, "save_every": 2, "lr": 1e-3, "warmup": 2, "log_every": 1}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_from_openclip_trains_resumes_evaluates(tmp_path, tiny_data):
    """2 ranks (gloo) from an OpenCLIP weights file: trains with the CLIP BPE tokenizer, saves, resumes exactly
    from the middle save, and `python -m eval` reads the result."""
    _, config, weights = openclip_model(tmp_path)
    run_cfg = _config(tmp_path, tiny_data, {"openclip": str(config), "weights": str(weights)})
    data = {"shards": tiny_data["shards"], "tokenizer": str(bundled_vocab())}
    a = tmp_path / "a"
    proc = launch(a, data, config=str(run_cfg), small_model=False)
    assert "model.init_from: step 0 from" in proc.stdout + proc.stderr
    tag = a / "checkpoints" / "step00000002"
    assert (tag / "tokenizer.model").read_bytes() == bundled_vocab().read_bytes()
    from pretrain import checkpoint as ckpt
    client = ckpt.read_client_state(tag)
    assert client["tokenizer_kind"] == "clip_bpe" and client["architecture"]["text"]["vocab"] == 49408
    b = tmp_path / "b"
    proc = launch(b, data, config=str(run_cfg), small_model=False, resume=str(tag))
    assert "model.init_from" not in proc.stdout + proc.stderr  # a resume loads its own checkpoint
    ma, mb = metrics(a), metrics(b)
    assert sorted(mb) == [3, 4]
    for step in (3, 4):
        assert mb[step]["loss"] == pytest.approx(ma[step]["loss"], abs=1e-6), step
    out = tmp_path / "eval.json"
    subprocess.run([sys.executable, "-m", "eval", "--checkpoint", str(a), "--tasks", "fashion_mnist",
                    "--limit", "50", "--out", str(out)], check=True, capture_output=True, cwd=ROOT)
    result = json.loads(out.read_text())[0]
    assert result["step"] == 4 and result["architecture"]["vision"]["width"] == 64 and 0 <= result["metrics"]["acc1"]
    # the run exported as an OpenCLIP folder is itself a model.init_from source, with its tokenizer.model
    export = tmp_path / "export"
    subprocess.run([sys.executable, "-m", "eval.export", "--checkpoint", str(a), "--out", str(export)], check=True,
                   capture_output=True, cwd=ROOT)
    source = resolve({"folder": str(export)})
    assert load_tokenizer(source.tokenizer).kind == "clip_bpe" and source.tokenizer == export / "tokenizer.model"
    exported = torch.load(export / "open_clip_pytorch_model.bin", weights_only=True)
    for name, tensor in build(source).state_dict().items():
        assert torch.equal(tensor.reshape(exported[name].shape), exported[name]), name


def test_run_from_openclip_grows_preserving_the_loss(tmp_path, tiny_data):
    """A run from an OpenCLIP file grows by a written move at step 2 (PIM m = 1, the default, from the last
    weights): the grown model's loss on the batches the run takes next is the saved source model's loss and the
    run's own step-3 loss, and the grown checkpoint still carries the CLIP BPE tokenizer."""
    _, config, weights = openclip_model(tmp_path)
    run_cfg = _config(tmp_path, tiny_data, {"openclip": str(config), "weights": str(weights)})
    run = tmp_path / "run"
    launch(run, {"shards": tiny_data["shards"], "tokenizer": str(bundled_vocab())}, "train.steps=3",
           "train.save_every=2", "growth.at_steps=[2]", "growth.moves=[vision.heads*=2]", "growth.pim_source=last",
           config=str(run_cfg), small_model=False, ds_config="ds_configs/zero1.json")
    from pretrain import checkpoint as ckpt
    grown_tag = run / "grown" / "step2" / "step00000002"
    client = ckpt.read_client_state(grown_tag)
    assert client["tokenizer_kind"] == "clip_bpe" and client["growth_history"][-1]["move"] == "vision.heads*=2"
    assert (grown_tag / "tokenizer.model").read_bytes() == bundled_vocab().read_bytes()
    assert client["architecture"]["vision"]["heads"] == 4
    batches = first_batches(grown_tag, run, dp=2)
    grown = single_process_loss(grown_model(grown_tag), batches)
    source = saved_model(run / "checkpoints" / "step00000002")
    assert source.arch.vision.heads == 2
    assert abs(single_process_loss(source, batches) - grown) <= TOL
    assert abs(metrics(run)[3]["loss"] - grown) <= TOL
    final = ckpt.read_client_state(run / "checkpoints" / "step00000003")
    assert final["tokenizer_kind"] == "clip_bpe" and final["architecture"]["vision"]["heads"] == 4


def test_first_loss_at_tp2_equals_open_clip(tmp_path, tiny_data):
    """At parallel.tp=2 (2 ranks, one data-parallel rank) the run's first loss is open_clip's ClipLoss of the
    source model on the batch the run took (fp32, 1e-5)."""
    theirs, config, weights = openclip_model(tmp_path)
    run_cfg = _config(tmp_path, tiny_data, {"openclip": str(config), "weights": str(weights)})
    run = tmp_path / "run"
    launch(run, {"shards": tiny_data["shards"], "tokenizer": str(bundled_vocab())}, "train.steps=1",
           "train.save_every=0", "data.workers=0", "train.fingerprints=true", config=str(run_cfg),
           small_model=False, ds_config="ds_configs/zero1.json", extra_args=("--tp", "2"))
    record = metrics(run)[1]
    (images, texts), = first_batches(None, run, dp=1)
    from pretrain.trainer import batch_fingerprint
    assert record["batches"] == [[batch_fingerprint(images, texts)]] * 2  # both TP ranks took this batch
    with torch.no_grad():
        reference = ClipLoss()(*theirs.eval()(images, texts)).item()
    assert abs(record["loss"] - reference) <= 1e-5, (record["loss"], reference)


def _main(tmp_path, run_cfg, *overrides):
    """pretrain/main.py as one rank (the launcher's environment): returns (status, stderr)."""
    proc = subprocess.run([sys.executable, "pretrain/main.py", "--config", str(run_cfg),
                           f"train.out_dir={tmp_path / 'out'}", *overrides], cwd=ROOT, capture_output=True,
                          text=True, env=rank_env(), timeout=300)
    return proc.returncode, proc.stderr.strip().splitlines()


def test_bad_sources_are_one_line(tmp_path, tiny_data):
    _, config, weights = openclip_model(tmp_path)
    other = {**TINY, "vision_cfg": {**TINY["vision_cfg"], "width": 32}}
    _, _, other_weights = openclip_model(tmp_path, cfg=other, seed=1)
    cases = [({"openclip": str(config), "weights": str(other_weights)}, str(other_weights)),  # another architecture
             ({"openclip": str(config), "weights": str(tmp_path / "gone.pt")}, "gone.pt does not exist"),
             ({"openclip": "ViT-Nope-99", "weights": str(weights)}, "unknown OpenCLIP model 'ViT-Nope-99'"),
             ({"openclip": "ViT-B-32-quickgelu", "weights": str(weights)}, "quick_gelu=True")]
    for i, (init_from, expected) in enumerate(cases):
        status, err = _main(tmp_path, _config(tmp_path, tiny_data, init_from, f"bad{i}.yaml"))
        assert status == 2, (init_from, err)
        assert err[-1].startswith("error: ") and expected in err[-1], err[-3:]


def test_pipeline_run_from_openclip_starts_from_its_weights_and_grows_by_itself(tmp_path, tiny_data):
    """At parallel.pp=2 (2 ranks, one stage each) the run's first loss is open_clip's ClipLoss of the source model on
    the batch the first stage took (fp32, 1e-5): the pipeline is built from the init_from weights. Its data then
    arrives in a second stage at step 2 and the automatic growth (growth.mode=auto, always_grow) searches with the
    run's CLIP BPE tokenizer, grows, and the grown checkpoint keeps that tokenizer (clip_bpe, same bytes)."""
    theirs, config, weights = openclip_model(tmp_path)
    run_cfg = _config(tmp_path, tiny_data, {"openclip": str(config), "weights": str(weights)})
    shards = tiny_data["shards"]
    stages = [f"{shards}/shard-{{000000..000003}}.tar", shards]
    run = tmp_path / "run"
    launch(run, {"shards": '""', "tokenizer": str(bundled_vocab())}, "train.steps=3", "train.save_every=0",
           "data.workers=0", "data.order=global", "train.fingerprints=true", f"data.stages={json.dumps(stages)}",
           "data.stage_steps=[2]", "growth.mode=auto", "growth.candidates=1", "growth.proxy_steps=2",
           "growth.proxy_batch=8", "growth.heldout_batches=2", "growth.always_grow=true", config=str(run_cfg),
           small_model=False, ds_config="ds_configs/zero1.json", extra_args=("--pp", "2"))
    m = metrics(run)
    (images, texts), = first_batches(None, run, dp=1)
    from pretrain.trainer import batch_fingerprint
    assert m[1]["batches"] == [[batch_fingerprint(images, texts)], []]  # the first stage read it, the last none
    with torch.no_grad():
        reference = ClipLoss()(*theirs.eval()(images, texts)).item()
    assert abs(m[1]["loss"] - reference) <= 1e-5, (m[1]["loss"], reference)
    summary = next(r for r in map(json.loads, (run / "growth" / "search-step2.jsonl").read_text().splitlines())
                   if r.get("summary"))
    vocab = load_tokenizer(bundled_vocab())
    assert summary["tokenizer"] == {"kind": "clip_bpe", "sha256": vocab.sha256} and not summary["kept"]
    from pretrain import checkpoint as ckpt
    grown_tag = run / "grown" / "step2" / "step00000002"
    client = ckpt.read_client_state(grown_tag)
    assert client["tokenizer_kind"] == "clip_bpe" and client["growth_history"][-1]["move"] == summary["winner"]
    assert (grown_tag / "tokenizer.model").read_bytes() == bundled_vocab().read_bytes()
    assert m[3]["params"] > m[2]["params"] and m[3]["data_samples"] == 2 * m[2]["data_samples"]
    final = ckpt.read_client_state(run / "checkpoints" / "step00000003")
    assert final["tokenizer_kind"] == "clip_bpe" and final["architecture"] == client["architecture"]
    assert client["layout"]["pp"] == final["layout"]["pp"] == 2  # the grown run is a pipeline run too
