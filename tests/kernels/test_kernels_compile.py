"""The custom ops trace into one torch.compile graph (no graph breaks) and compiled forward and
backward match eager."""
import torch
import torch.nn.functional as F

from kernels import clip_loss, contrastive_loss, flash_attention


def _step(q, k, v, lens, image, text, scale):
    o = flash_attention(q, k, v, causal=True) + flash_attention(q, k, v, key_lengths=lens)
    half = image.shape[0] // 2  # a distributed-style call: rank 1 of 2
    local = contrastive_loss(image[half:], text[half:], image, text, scale, offset=half)
    return clip_loss(image, text, scale) + local + o.float().square().mean()


def _inputs():
    q, k, v = (torch.randn(2, 2, 50, 32, requires_grad=True) for _ in range(3))
    lens = torch.tensor([50, 17], dtype=torch.int32)
    image, text = (F.normalize(torch.randn(40, 32), dim=-1).requires_grad_() for _ in range(2))
    return q, k, v, lens, image, text, torch.tensor(20.0, requires_grad=True)


def test_no_graph_breaks():
    explanation = torch._dynamo.explain(_step)(*_inputs())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_matches_eager():
    args = _inputs()
    leaves = [a for a in args if a.requires_grad]
    eager = _step(*args)
    eager_grads = torch.autograd.grad(eager, leaves)
    torch._dynamo.reset()
    compiled = torch.compile(_step, backend="aot_eager", fullgraph=True)(*args)
    compiled_grads = torch.autograd.grad(compiled, leaves)
    torch.testing.assert_close(compiled, eager)
    for g, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(g, e)
