"""The contrastive loss on the features of the training dtype (pretrain/loss.py), and train.fp8's refusal.

- The torch path on fp16/bf16 features: an fp32 loss from fp32 logits, the feature gradients in the feature dtype,
  against float64 on the same rounded inputs, single process and an emulated rank (offset). Tolerances: loss 1e-5
  relative (the CPU upcasts: exact products, fp32 sums); gradients max |err| / max |ref| <= 4e-3 (fp16) and 2e-2
  (bf16): the logit gradient is rounded to the feature dtype for its GEMMs and the result once more (ulp 2^-11 and
  2^-8 relative).
- The gather over data parallelism in fp16/bf16 with gloo (2 processes): exact forward, gradients summed in fp32.
- The trainer's loss receives bf16 features in a bf16 run and fp32 features in an fp32 run, and the loss is fp32;
  train.fp8=true is refused in one line on this CPU machine (tests/train/loss_dtype_worker.py, one Trainer process).
- convert_to_fp8 swaps the eligible linear layers and keeps every parameter name and shape (torchao on the CPU).
"""
import json
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from kernels import contrastive_loss_reference
from pretrain.loss import clip_loss_torch, contrastive_loss
from tests.conftest import ROOT, rank_env

GRAD_ERR = {torch.float16: 4e-3, torch.bfloat16: 2e-2}


def _err(got, ref):
    return float((got.double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("world", [1, 3])
def test_torch_path_on_16_bit_features(dtype, world):
    B, D = 48, 32
    image, text = (F.normalize(torch.randn(B, D), dim=-1).to(dtype).requires_grad_() for _ in range(2))
    scale = torch.tensor(50.0, requires_grad=True)
    b = B // world
    loss = sum(clip_loss_torch(image[r * b:(r + 1) * b], text[r * b:(r + 1) * b], image, text, scale, r * b)
               for r in range(world)) / world
    grads = torch.autograd.grad(loss, (image, text, scale))
    i64, t64, s64 = (x.detach().double().requires_grad_() for x in (image, text, scale))
    ref = contrastive_loss_reference(i64, t64, i64, t64, s64)
    ref_grads = torch.autograd.grad(ref, (i64, t64, s64))
    assert loss.dtype == torch.float32 and grads[0].dtype == grads[1].dtype == dtype
    assert abs(loss.item() - ref.item()) <= 1e-5 * ref.item()
    assert _err(grads[2], ref_grads[2]) <= 1e-5
    assert max(_err(grads[0], ref_grads[0]), _err(grads[1], ref_grads[1])) <= GRAD_ERR[dtype]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_worker(rank: int, world: int, port: int):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        from pretrain.loss import gather_with_grad
        for dtype in (torch.float16, torch.bfloat16):
            g = torch.Generator().manual_seed(7)
            full = torch.randn(world * 4, 8, generator=g).to(dtype)
            weight = torch.randn(world, world * 4, 8, generator=g)  # rank r's upstream gradient
            local = full[rank * 4:(rank + 1) * 4].clone().requires_grad_()
            gathered = gather_with_grad(local)
            assert gathered.dtype == dtype and torch.equal(gathered, full)
            (gathered.float() * weight[rank]).sum().backward()
            # each rank's gradient reaches the gather in the feature dtype (the cast's backward); the sum over
            # ranks is fp32, rounded once (with 2 ranks the same as a 16-bit sum: this checks values and dtypes)
            expected = weight.to(dtype).float().sum(0)[rank * 4:(rank + 1) * 4].to(dtype)
            assert local.grad.dtype == dtype and torch.equal(local.grad, expected), (dtype, local.grad, expected)
            # and the whole loss over the group: its mean over ranks is the single-process loss
            image, text = (F.normalize(torch.randn(world * 4, 16, generator=g), dim=-1).to(dtype)
                           for _ in range(2))
            rows = slice(rank * 4, (rank + 1) * 4)
            loss = contrastive_loss(image[rows], text[rows], torch.tensor(20.0), group=None)
            dist.all_reduce(loss)
            ref = contrastive_loss_reference(image.double(), text.double(), image.double(), text.double(),
                                             torch.tensor(20.0, dtype=torch.float64))
            assert abs(float(loss) / world - float(ref)) <= 1e-5 * float(ref)
    finally:
        dist.destroy_process_group()


def test_gather_with_grad_in_16_bits_over_gloo():
    mp.spawn(_gather_worker, args=(2, _free_port()), nprocs=2, join=True)


def test_the_trainer_loss_gets_the_training_dtype_and_fp8_is_refused_here(tiny_data, tmp_path):
    proc = subprocess.run([sys.executable, "tests/train/loss_dtype_worker.py", tiny_data["shards"],
                           tiny_data["tokenizer"], str(tmp_path)], cwd=ROOT, env=rank_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for run, dtype in (("fp32", "torch.float32"), ("bf16", "torch.bfloat16")):
        assert result[run]["seen"] == [[dtype] * 4 + ["torch.float32"]], result  # features, then the scale
        assert result[run]["loss_dtype"] == "torch.float32"
    # the same weights and batch: bf16 features move the first loss by bf16 rounding only
    assert result["bf16"]["loss"] == pytest.approx(result["fp32"]["loss"], rel=2e-2)
    assert result["fp8"].startswith("train.fp8=true refused: float8 training needs a CUDA GPU")
    assert "\n" not in result["fp8"]


def test_convert_to_fp8_keeps_names_and_shapes():
    """The tiny model's 24 nn.Linear layers (out_proj, c_fc, c_proj of its 8 blocks) become Float8Linear; the
    parameters keep their names and shapes, so checkpoints and EMA see the same model. (No fp8 forward here: the
    CPU has no fp8 GEMM; tests/kernels_gpu/test_fp8_gpu.py trains with it.)"""
    pytest.importorskip("torchao")
    import yaml

    from pretrain.arch import Architecture
    from pretrain.fp8 import convert_to_fp8
    from pretrain.model import CLIP
    model = CLIP(Architecture.from_dict(yaml.safe_load((ROOT / "configs/models/tiny.yaml").read_text())))
    before = {n: p.shape for n, p in model.named_parameters()}
    assert convert_to_fp8(model) == 24
    assert sum(type(m).__name__ == "Float8Linear" for m in model.modules()) == 24
    assert {n: p.shape for n, p in model.named_parameters()} == before
