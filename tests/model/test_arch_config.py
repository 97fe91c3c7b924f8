"""The architecture object and the run config: round trips, and errors that name the field."""
import dataclasses

import pytest
import torch

from pretrain.arch import Architecture, ArchitectureError, SharedEncoder
from pretrain.config import ConfigError, load_run_config
from pretrain.model import CLIP
from pretrain.trainer import check_kernel_head_dims

TINY = "configs/models/tiny.yaml"


@pytest.mark.parametrize("name", ["tiny", "vit-b-32", "vit-b-16", "vit-l-14"])
def test_configs_load_and_round_trip(tmp_path, name):
    arch = Architecture.load(f"configs/models/{name}.yaml")
    for suffix in (".yaml", ".json"):
        arch.save(tmp_path / f"a{suffix}")
        assert Architecture.load(tmp_path / f"a{suffix}") == arch


@pytest.mark.parametrize("change, message", [
    ({"vision": {"width": 100, "heads": 3}}, "vision.width=100 is not divisible by vision.heads=3"),
    ({"vision": {"patch": 5, "image_size": 28}}, "vision.patch=5 does not divide vision.image_size=28"),
    ({"text": {"layers": 0}}, "text.layers must be an integer >= 1, got 0"),
    ({"shared": {"layers": -1}}, "shared.layers must be an integer >= 0, got -1"),
    ({"vision": {"layers": 2.5}}, "vision.layers must be an integer >= 1, got 2.5"),  # tests/fuzz: accepted before
    ({"embed_dim": None}, "embed_dim must be an integer >= 1, got None"),  # tests/fuzz: a TypeError before
    ({"text": {"mlp_ratio": float("nan")}}, "text.mlp_ratio must be a positive finite number, got nan"),
    ({"text": {"vocabulary": 3}}, "text.vocabulary"),
    ({"visual": {}}, "unknown key"),
    ({"text": {"head_dim": 0}}, "text.head_dim must be a positive integer or null, got 0"),
    ({"shared": {"head_dim": 8.5}}, "shared.head_dim must be a positive integer or null, got 8.5"),
])
def test_invalid_architectures_name_the_field(change, message):
    with pytest.raises(ArchitectureError, match=message.replace(".", r"\.").replace("(", r"\(")):
        Architecture.from_dict(change)


def test_shared_encoder_with_adapters_shapes():
    arch = Architecture.load(TINY)
    arch = arch.replace(shared=SharedEncoder(layers=2, width=64, heads=2))
    model = CLIP(arch)
    names = dict(model.named_parameters())
    assert names["shared.adapter_visual.weight"].shape == (64, 128)
    assert names["visual.proj"].shape == (64, arch.embed_dim)
    assert names["text_projection"].shape == (64, arch.embed_dim)
    image = torch.randn(3, 3, 28, 28)
    text = torch.randint(1, 100, (3, arch.text.context))
    text[:, 7] = arch.text.vocab - 1
    i, t, s = model(image, text)
    assert i.shape == t.shape == (3, arch.embed_dim)
    assert torch.allclose(i.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert abs(s.item() - 1 / 0.07) < 1e-4


def test_head_dim_decouples_the_attention_inner_dim():
    """heads·head_dim need not equal the width (Megatron's kv_channels); unset, it is width / heads."""
    arch = Architecture.from_dict({"vision": {"width": 100, "heads": 3, "head_dim": 32}})
    assert (arch.vision.attn_width, arch.vision.attn_head_dim) == (96, 32)
    assert Architecture.from_dict({"text": {"width": 512, "heads": 8}}).text.attn_head_dim == 64
    tiny = Architecture.load(TINY)
    wide = tiny.replace(text=dataclasses.replace(tiny.text, heads=tiny.text.heads * 2,
                                                 head_dim=tiny.text.width // tiny.text.heads))
    assert wide.text.attn_width == 2 * tiny.text.width
    attn = dict(CLIP(wide).named_parameters())
    assert attn["transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * wide.text.attn_width, tiny.text.width)
    assert attn["transformer.resblocks.0.attn.out_proj.weight"].shape == (tiny.text.width, wide.text.attn_width)
    t = tiny.text
    grown_attention = 2 * 4 * t.width * t.width * t.context + 4 * t.context ** 2 * t.width * 0.5  # per block
    assert wide.flops_per_sample() - tiny.flops_per_sample() == pytest.approx(t.layers * grown_attention)
    text = torch.randint(1, 100, (2, t.context))
    assert CLIP(wide).encode_text(text).shape == (2, wide.embed_dim)


def test_triton_kernel_head_dim_limit_names_the_tower():
    arch = Architecture.load(TINY)
    check_kernel_head_dims(arch)
    wide = arch.replace(vision=dataclasses.replace(arch.vision, head_dim=256))
    with pytest.raises(ConfigError, match=r"model vision\.head_dim is 256 .* at most 128: add heads, or set "
                                          r"train\.kernels=torch"):
        check_kernel_head_dims(wide)


def test_text_is_causal_and_image_is_not():
    torch.manual_seed(0)
    arch = Architecture.load(TINY).replace(shared=SharedEncoder(layers=1, width=128, heads=4))
    model = CLIP(arch).eval()
    text = torch.randint(1, 100, (1, arch.text.context))
    text[0, 5] = arch.text.vocab - 1
    changed = text.clone()
    changed[0, 10] = 7  # after end-of-text: a causal text tower cannot see it
    assert torch.equal(model.encode_text(text), model.encode_text(changed))


def test_logit_scale_is_clamped_at_100():
    model = CLIP(Architecture.load(TINY))
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(100.0)


def test_run_config_overrides_and_errors(tmp_path):
    tok = tmp_path / "tok.model"
    tok.write_bytes(b"x")
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(f"model: {TINY}\ndata: {{shards: x, tokenizer: {tok}}}\ntrain: {{steps: 5}}\n")
    cfg = load_run_config(cfg_file, ["train.lr=0.01", "model.vision.layers=2"])
    assert cfg.train.lr == 0.01 and cfg.train.steps == 5
    with pytest.raises(ConfigError, match=r"train\.stepz"):
        load_run_config(cfg_file, ["train.stepz=3"])
    with pytest.raises(ConfigError, match=r"train\.lr must be float"):
        load_run_config(cfg_file, ["train.lr=fast"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(cfg_file, ["data.tokenizer=/nope.model"])
    with pytest.raises(ConfigError, match=r"train\.micro_batch must be positive"):
        load_run_config(cfg_file, ["train.micro_batch=0"])
