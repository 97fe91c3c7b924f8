"""The model with `kernels=triton` (interpreted here) gives the torch path's loss and gradients, and compiles
without graph breaks."""
import pytest
import torch

from pretrain.arch import Architecture, SharedEncoder
from pretrain.loss import contrastive_loss
from pretrain.model import CLIP, set_backend

ARCH = Architecture.from_dict({
    "vision": {"layers": 1, "width": 64, "heads": 2, "patch": 7, "image_size": 28},
    "text": {"layers": 1, "width": 64, "heads": 2, "vocab": 300, "context": 16},
    "shared": {"layers": 1, "width": 32, "heads": 1}, "embed_dim": 32})


def _batch(b=6):
    image = torch.randn(b, 3, 28, 28)
    text = torch.randint(1, 299, (b, 16))
    text[torch.arange(b), torch.randint(3, 16, (b,))] = 299  # end-of-text, the largest id
    return image, text


def _loss_and_grads(model, image, text, backend):
    set_backend(backend)
    try:
        model.zero_grad()
        i, t, s = model(image, text)
        loss = contrastive_loss(i, t, s, use_triton=backend == "triton")
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    finally:
        set_backend("torch")


def test_triton_and_torch_paths_agree():
    model = CLIP(ARCH)
    image, text = _batch()
    loss_t, grads_t = _loss_and_grads(model, image, text, "torch")
    loss_k, grads_k = _loss_and_grads(model, image, text, "triton")
    assert torch.allclose(loss_k, loss_t, rtol=1e-5, atol=1e-6)
    for name, g in grads_t.items():  # fp32, interpreter: same tolerance as the kernel tests
        assert torch.allclose(grads_k[name], g, rtol=1e-4, atol=2e-5), name


def test_compiled_model_with_kernels_has_no_graph_breaks():
    model = CLIP(ARCH.replace(shared=SharedEncoder(layers=0, width=64, heads=2)))
    image, text = _batch()
    set_backend("triton")
    try:
        def step(image, text):
            i, t, s = model(image, text)
            return contrastive_loss(i, t, s, use_triton=True)
        explanation = torch._dynamo.explain(step)(image, text)
    finally:
        set_backend("torch")
    assert explanation.graph_break_count == 0, explanation.break_reasons
    ops = {str(n.target) for g in explanation.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert any("growclip.flash_attention" in o for o in ops), ops
    assert any("growclip.contrastive_loss" in o for o in ops), ops


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="kernels must be"):
        set_backend("cuda")
