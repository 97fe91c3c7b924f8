"""train.kernels=auto (kernels/auto.py): shape classes, the record file, what auto picks with and without a record,
and the model's attention following the active tables per shape class."""
import json

import pytest
import torch

import kernels
from kernels import auto
from pretrain.model import attention, set_backend
from pretrain.trainer import kernel_choice, uses_triton

RECORD = {"device": "NVIDIA H200", "attention": {"n224_d64": "triton", "n96_d64_causal": "sdpa"},
          "loss": {"b16384": "triton"}}


@pytest.fixture(autouse=True)
def _reset():
    yield
    auto.activate({})
    set_backend("torch")


def test_shape_classes():
    assert auto.attention_class(197, 64, False) == "n224_d64"
    assert auto.attention_class(77, 64, True) == "n96_d64_causal"
    assert auto.attention_class(257, 80, False) == "n320_d128"
    assert auto.attention_class(1000, 32, False) == "nlarge_d32"
    assert auto.attention_class(197, 256, False) is None  # beyond the kernel: never Triton
    assert [auto.loss_class(b) for b in (256, 16384, 16385, 65536, 70000)] == \
        ["b4096", "b16384", "b32768", "b65536", "blarge"]
    assert auto.loss_class(65536, "bf16") == "b65536_bf16" and auto.loss_class(100, "fp16") == "b4096_fp16"
    assert auto.gpu_model("NVIDIA H200") == "H200" and auto.gpu_model("NVIDIA A100-SXM4-80GB") == "A100"


def test_without_a_record_auto_is_sdpa_and_the_torch_loss(tmp_path):
    """The acceptance rule: no record (a CPU, or a GPU nobody benchmarked) -> SDPA and the torch loss."""
    assert auto.record_for(None) is None
    assert auto.record_for("NVIDIA H200", auto.load_records(tmp_path / "none.json")) is None
    auto.activate(auto.choose(None))
    assert auto.attention_impl(197, 64, False) == "sdpa" and auto.loss_impl(256) == "torch"
    assert kernel_choice("auto", torch.device("cpu"), 256) == {"attention": "torch", "loss": "torch", "record": None}
    assert kernel_choice("triton", torch.device("cpu"), 256)["loss"] == "triton"
    assert kernel_choice("torch", torch.device("cpu"), 256)["attention"] == "torch"


def test_the_shipped_record_file_parses():
    records = auto.load_records()
    for model, record in records.items():
        auto.choose(record)  # raises on an unknown implementation
        assert auto.gpu_model(record["device"]) == model


def test_a_record_picks_per_op_and_shape_class(tmp_path):
    path = tmp_path / "records.json"
    part = tmp_path / "part.json"
    part.write_text(json.dumps({"records": {"H200": RECORD}}))
    auto.merge([str(part)], path)
    record = auto.record_for("NVIDIA H200", auto.load_records(path))
    assert record == RECORD and auto.record_for("NVIDIA A100-SXM4-80GB", auto.load_records(path)) is None
    auto.activate(auto.choose(record))
    assert auto.attention_impl(197, 64, False) == "triton"      # recorded faster
    assert auto.attention_impl(77, 64, True) == "sdpa"          # recorded slower
    assert auto.attention_impl(50, 64, False) == "sdpa"         # a class the record does not name
    assert auto.attention_impl(197, 256, False) == "sdpa"       # the kernel cannot take it
    assert auto.loss_impl(16384) == "triton" and auto.loss_impl(256) == "torch"
    with pytest.raises(ValueError, match="expected one of"):
        auto.choose({"attention": {"n224_d64": "cudnn"}})


def test_decide_from_a_bench_result():
    bench = {"device": "NVIDIA H200", "attention": [
        dict(N=197, D=64, causal=False, impl="ours", ms=1.0),
        dict(N=197, D=64, causal=False, impl="sdpa_cudnn", ms=1.5),
        dict(N=197, D=64, causal=False, impl="sdpa_flash", error="unsupported"),
        dict(N=77, D=64, causal=True, impl="ours", ms=2.0), dict(N=77, D=64, causal=True, impl="sdpa_flash", ms=1.0)],
        "loss": [dict(B=16384, D=512, impl="ours", ms=2.0), dict(B=16384, D=512, impl="open_clip", ms=4.9),
                 dict(B=16384, D=768, impl="ours", ms=3.0), dict(B=16384, D=768, impl="open_clip", ms=6.0),
                 dict(B=65536, D=512, impl="ours", ms=30.0), dict(B=65536, D=512, impl="open_clip", error="OOM")]}
    record = auto.decide(bench)
    assert record["attention"] == {"n224_d64": "triton", "n96_d64_causal": "sdpa"}
    assert record["loss"] == {"b16384": "triton", "b65536": "triton"}
    # rows without a dtype count as fp32; bf16 rows decide the bf16 classes (a bf16 run passes bf16 features)
    bench["loss"] += [dict(B=16384, D=512, dtype="bf16", impl="ours", ms=9.0),
                      dict(B=16384, D=512, dtype="bf16", impl="open_clip", ms=8.0),
                      dict(B=65536, D=512, dtype="bf16", impl="ours", ms=9.0),
                      dict(B=65536, D=512, dtype="bf16", impl="open_clip", ms=18.0)]
    record = auto.decide(bench)
    assert record["loss"] == {"b16384": "triton", "b65536": "triton", "b16384_bf16": "torch",
                              "b65536_bf16": "triton"}
    auto.activate(auto.choose(record))
    assert auto.loss_impl(16384) == "triton" and auto.loss_impl(16384, "bf16") == "torch"
    assert auto.loss_impl(65536, "bf16") == "triton" and auto.loss_impl(65536, "fp16") == "torch"  # no fp16 rows


def test_bench_summary_and_decision():
    """kernels.bench's summary and --record on a canned result (the GPU parts replaced)."""
    from kernels import bench
    result = {"device": "NVIDIA H200", "date": "d", "torch": "t", "triton": "x",
              "attention": [dict(shape="vit_b16", N=197, D=64, causal=False, impl="ours", ms=1.0),
                            dict(shape="vit_b16", N=197, D=64, causal=False, impl="sdpa_cudnn", ms=2.0)],
              "loss": [dict(B=65536, D=512, dtype="fp32", impl="ours", ms=50.0, peak_gib=0.1),
                       dict(B=65536, D=512, dtype="fp32", impl="open_clip", ms=100.0, peak_gib=40.0)]}
    summary = bench._summary(result)
    assert summary["attention_vit_b16_speedup_vs_best_sdpa"] == 2.0
    assert summary["loss_B65536_D512_fp32_time_ratio"] == 0.5
    assert summary["loss_B65536_D512_fp32_memory_ratio"] == 0.0025
    assert "loss_B65536_D512_bf16_meets_target" not in summary  # no bf16 rows
    bf16 = [dict(r, dtype="bf16") for r in result["loss"]]
    assert bench._summary({**result, "loss": bf16})["loss_B65536_D512_bf16_meets_target"]  # 0.5x, 1/400
    bf16[0]["ms"] = 51.0
    assert not bench._summary({**result, "loss": bf16})["loss_B65536_D512_bf16_meets_target"]
    record = auto.decide({**result, "summary": summary})
    assert record["attention"] == {"n224_d64": "triton"} and record["loss"] == {"b65536": "triton"}


def test_model_attention_follows_the_active_tables(monkeypatch):
    """set_backend("auto"): each call asks kernels.auto for its (N, head_dim, causal) class."""
    calls = []

    def spy(q, k, v, causal=False):
        calls.append((q.shape[-2], causal))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    monkeypatch.setattr(kernels, "flash_attention", spy)
    auto.activate(auto.choose(RECORD))
    set_backend("auto")
    vision = [torch.randn(2, 2, 197, 64) for _ in range(3)]
    text = [torch.randn(2, 2, 77, 64) for _ in range(3)]
    attention(*vision, causal=False)
    attention(*text, causal=True)
    assert calls == [(197, False)]  # the text class is recorded as SDPA


def test_uses_triton_is_the_forced_choice_only():
    class Cfg:
        class train:
            kernels = "auto"
    assert not uses_triton(Cfg)
    Cfg.train.kernels = "triton"
    assert uses_triton(Cfg)


def test_auto_attention_traces_as_one_graph():
    """Under torch.compile the per-call choice is a dict lookup on static shapes: no graph break, either path."""
    auto.activate(auto.choose(RECORD))
    set_backend("auto")

    def both(v, t):
        return attention(v, v, v, causal=False).sum() + attention(t, t, t, causal=True).sum()

    explanation = torch._dynamo.explain(both)(torch.randn(1, 1, 197, 64), torch.randn(1, 1, 77, 64))
    assert explanation.graph_break_count == 0, explanation.break_reasons
