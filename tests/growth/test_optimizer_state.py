"""Adam state follows the weights. After growth with m = 1, one AdamW step of the grown model equals, on every
inherited coordinate, the step the source takes on the same batch (depth, heads, MLP and shared-layer moves), and
new coordinates start with zero moments. In-process, with torch.optim.AdamW holding exp_avg/exp_avg_sq/step as
DeepSpeed's universal loading sets them; tests/growth/test_grow_checkpoint.py checks that DeepSpeed loads them.

Width moves are not step-exact and are not in this list: a duplicated (fan-in shared) coordinate receives the full
gradient, which Adam normalises per coordinate. test_duplicated_channels_carry_scaled_moments checks their state,
for plain tiling and for the symmetry split (tests/growth/test_symmetry.py: every copy's own share). The moves here
duplicate nothing, so the split leaves them as they were; they run with it (the PIM default). Depth moves run with
fresh blocks: a copied block (depth_init "copy") gets no gradient at first (its residual outputs are zero) while its
source block does, so it is not step-exact by design (test_symmetry.py checks its state).
"""
import pytest
import torch

from growth.pim import PIM, fresh_init
from growth.plan import plan_growth
from growth.space import Moves
from growth.transform import grow_parameter, source_of
from pretrain.optim import param_groups
from tests.growth.helpers import fixed_batch, load, loss_of, random_model, tiny_arch

# Absolute, on parameters after one step at lr 1e-3: 1% of a step. Forward sums differ at the 1e-7 level (a GEMM
# with extra zero rows sums in another order), and Adam normalises per coordinate: the key biases, whose true
# gradient is zero (softmax ignores them), step by their rounding noise divided by its own RMS.
STEP_TOL = 1e-5


def adamw(model):
    return torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.98), eps=1e-6)


def train_step(model, opt, batch):
    opt.zero_grad()
    loss_of(model, batch).backward()
    opt.step()


def trained_source(arch, steps=3):
    model = random_model(arch)
    opt = adamw(model)
    for i in range(steps):
        train_step(model, opt, fixed_batch(arch, seed=10 + i))
    return model, opt


def grow_with_optimizer(src_arch, move, split=0.5, depth_init="fresh", noise=0.0):
    """The grown model and an AdamW loaded with the grown universal state (fp32, moments, step)."""
    dst_arch = Moves.parse(move).apply(src_arch)
    model, opt = trained_source(src_arch)
    params = dict(model.named_parameters())
    fp32 = {n: p.detach().clone() for n, p in params.items()}
    avg = {n: opt.state[p]["exp_avg"].clone() for n, p in params.items()}
    avg_sq = {n: opt.state[p]["exp_avg_sq"].clone() for n, p in params.items()}
    step = opt.state[params["logit_scale"]]["step"].clone()
    plan, init = plan_growth(src_arch, dst_arch, split=split, depth_init=depth_init), fresh_init(dst_arch, 0)
    pim = PIM(1.0, split=split, noise=noise)
    grown = {n: grow_parameter(t, source_of(t, fp32), source_of(t, avg), source_of(t, avg_sq), init[n], pim)
             for n, t in plan.items()}
    dst = load(dst_arch, {n: g["fp32"] for n, g in grown.items()})
    dst_opt = adamw(dst)
    for n, p in dst.named_parameters():
        dst_opt.state[p] = {"step": step.clone(), "exp_avg": grown[n]["exp_avg"], "exp_avg_sq": grown[n]["exp_avg_sq"]}
    return model, opt, dst, dst_opt, plan, grown


def inherited(tmap, t: torch.Tensor) -> torch.Tensor:
    mask = tmap.new_mask(t.ndim)
    return t if mask is None else torch.where(mask, torch.zeros((), dtype=t.dtype), t)


MOVES = [(0, "vision.layers+=2"), (0, "text.layers+=1"), (0, "vision.mlp_ratio*=2"), (0, "text.mlp_ratio*=1.5"),
         (0, "vision.heads*=2"), (0, "text.heads+=1"), (1, "shared.heads*=2"),
         (0, "shared.layers=1"), (1, "shared.layers+=1"), (1, "shared.mlp_ratio*=2"),
         (0, "vision.layers+=1,text.mlp_ratio*=2,text.heads*=2")]


@pytest.mark.parametrize("shared, move", MOVES, ids=[m for _, m in MOVES])
def test_one_step_matches_the_source_on_inherited_coordinates(shared, move):
    src, opt, dst, dst_opt, plan, grown = grow_with_optimizer(tiny_arch(shared_layers=shared), move)
    for name, tmap in plan.items():  # new coordinates start with zero moments
        for state in ("exp_avg", "exp_avg_sq"):
            t = grown[name][state]
            assert not (t - inherited(tmap, t)).any(), (name, state)
            if not isinstance(tmap.source, str):
                assert not t.any(), (name, state)
    batch = fixed_batch(src.arch, seed=99)
    train_step(src, opt, batch)
    train_step(dst, dst_opt, batch)
    src_after = {n: p.detach() for n, p in src.named_parameters()}
    worst = 0.0
    for name, p in dst.named_parameters():
        tmap = plan[name]
        if isinstance(tmap.source, str):
            expected = inherited(tmap, tmap.weights(src_after[tmap.source], torch.zeros_like(p)))
            worst = max(worst, (inherited(tmap, p.detach()) - expected).abs().max().item())
    assert worst <= STEP_TOL


def test_heads_move_new_heads_start_at_zero():
    """vision heads 2 -> 4 at head_dim 16: heads 2 and 3 (rows 32..63 of each of q, k, v; out-proj columns
    32..63) are new and carry no moments; the old heads carry the source's."""
    src, opt, dst, dst_opt, plan, grown = grow_with_optimizer(tiny_arch(), "vision.heads*=2")
    width, inner = dst.arch.vision.width, dst.arch.vision.attn_width
    assert (width, inner) == (32, 64)
    for i in range(dst.arch.vision.layers):
        qkv = grown[f"visual.transformer.resblocks.{i}.attn.in_proj_weight"]["exp_avg"].view(3, inner, width)
        out = grown[f"visual.transformer.resblocks.{i}.attn.out_proj.weight"]["exp_avg_sq"]
        assert out.shape == (width, inner)
        assert not qkv[:, inner // 2:].any() and not out[:, inner // 2:].any()
        src_qkv = opt.state[dict(src.named_parameters())[f"visual.transformer.resblocks.{i}.attn.in_proj_weight"]]
        assert torch.equal(qkv[:, :inner // 2].reshape(-1, width), src_qkv["exp_avg"])


@pytest.mark.parametrize("split, first, second", [(0.0, 0.5, 0.5), (0.5, 0.25, 0.75)])
def test_duplicated_channels_carry_scaled_moments(split, first, second):
    """Width x2: exp_avg follows the weight's scale s (on fan-in copies each copy's share: 1/2 and 1/2 for plain
    tiling, 0.25 and 0.75 at split 0.5), exp_avg_sq s²; fan-out copies (rows) keep the source's."""
    src, opt, dst, dst_opt, plan, grown = grow_with_optimizer(tiny_arch(), "text.width*=2", split=split)
    name = "transformer.resblocks.0.mlp.c_fc.weight"  # [hidden, width]: rows and columns duplicated
    src_param = dict(src.named_parameters())[name]
    avg, avg_sq = opt.state[src_param]["exp_avg"], opt.state[src_param]["exp_avg_sq"]
    rows, cols = avg.shape
    assert torch.equal(grown[name]["exp_avg"][:rows, :cols], avg * first)
    assert torch.equal(grown[name]["exp_avg"][rows:, :cols], avg * first)
    assert torch.equal(grown[name]["exp_avg"][rows:, cols:], avg * second)
    assert torch.equal(grown[name]["exp_avg_sq"][:rows, :cols], avg_sq * (first * first))
    assert torch.equal(grown[name]["exp_avg_sq"][:rows, cols:], avg_sq * (second * second))
    assert torch.equal(grown[name]["fp32"][:rows, cols:], src_param.detach() * second)


def test_reset_moments():
    src_arch = tiny_arch()
    plan, init = plan_growth(src_arch, src_arch), fresh_init(src_arch, 0)
    t = plan["visual.proj"]
    out = grow_parameter(t, init["visual.proj"], torch.ones_like(init["visual.proj"]),
                         torch.ones_like(init["visual.proj"]), init["visual.proj"], PIM(1.0), reset_moments=True)
    assert not out["exp_avg"].any() and not out["exp_avg_sq"].any()
