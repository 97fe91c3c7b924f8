"""Symmetry breaking that stays lossless, and depth growth by stacking (issue 17).

Width, MLP-hidden and head_dim growth duplicate units. With plain tiling (split 0) the copies' readers weigh them
equally, so under AdamW the copies receive identical gradients and stay bit-identical forever: the growth adds
no capacity. With split 0.5 the readers share each unit 0.25 / 0.75, the grown function is unchanged, and real
training steps (torch AdamW over pretrain.optim.param_groups, the contrastive loss pretrain.loss.clip_loss_torch,
fixed random image/text batches) separate the copies. Adam state follows each copy's share. A stacked block
(depth_init "copy") holds the weights and moments of the old block it follows, its residual outputs zero.
"""
import pytest
import torch

from growth import operators as op
from growth.errors import GrowthError
from growth.index_map import NEW, IndexMap, TensorMap
from growth.pim import PIM, fresh_init
from growth.plan import RESIDUAL_OUTPUTS, plan_growth
from growth.space import Moves
from growth.transform import grow_weights
from tests.growth.helpers import TOL, fixed_batch, load, loss_of, random_model, tiny_arch
from tests.growth.test_optimizer_state import grow_with_optimizer, train_step

STEPS = 5
# text.width*=2 duplicates the residual channels, the MLP hidden units and (head_dim tied to the width) the head
# dims; vision.head_dim*=2 duplicates the head dims alone
DUPLICATING = ["text.width*=2", "vision.head_dim*=2"]


def copy_spread(plan: dict[str, TensorMap], model) -> dict[tuple[str, int], float]:
    """For every duplicated dimension of every parameter, the largest difference between a copy and the first
    copy of the same source unit, each slice divided by its own scale (its share), so that copies weighed 0.25
    and 0.75 compare equal at the growth."""
    spread = {}
    for name, p in model.named_parameters():
        t = p.detach().double()
        for d, m in enumerate(plan[name].dims):
            dup = (m.src != NEW) & (m.copies() > 1)
            if not bool(dup.any()):
                continue
            first = torch.zeros(m.source_size, dtype=torch.int64)
            old = (m.src != NEW).nonzero().flatten()
            first[m.src[old].flip(0)] = old.flip(0)  # the last write wins: the first target of each source
            shape = [1] * t.ndim
            shape[d] = -1
            norm = t / m.scale.view(shape)
            diff = (norm - norm.index_select(d, first[m.src.clamp(min=0)])).abs()
            spread[(name, d)] = diff.index_select(d, dup.nonzero().flatten()).max().item()
    return spread


def grow_and_train(move: str, split: float):
    """A source trained 3 AdamW steps, grown with its moments at `split`; the grown model's loss at the growth
    (beside the source's) and its copy spread at the growth and after STEPS more steps."""
    src, opt, dst, dst_opt, plan, grown = grow_with_optimizer(tiny_arch(), move, split=split)
    batch = fixed_batch(src.arch, n=8, seed=100)
    with torch.no_grad():
        losses = loss_of(src, batch).item(), loss_of(dst, batch).item()
    at_growth = copy_spread(plan, dst)
    for i in range(STEPS):
        train_step(dst, dst_opt, fixed_batch(src.arch, n=8, seed=100 + i))
    return losses, at_growth, copy_spread(plan, dst)


@pytest.mark.parametrize("move", DUPLICATING)
def test_plain_tiling_keeps_copies_identical_and_the_split_separates_them(move):
    (src_loss, loss), at_growth, trained = grow_and_train(move, 0.0)
    assert abs(src_loss - loss) <= TOL
    assert at_growth and set(at_growth.values()) == {0.0}
    assert set(trained.values()) == {0.0}, "plain tiling: the copies stayed bit-identical (the old defect)"

    (src_loss, loss), at_growth, trained = grow_and_train(move, 0.5)
    assert abs(src_loss - loss) <= TOL  # lossless
    assert max(at_growth.values()) <= 1e-6  # equal up to the rounding of w·0.75 / 0.75
    kinds = {"residual": "ln_1.weight", "hidden": "mlp.c_fc.weight", "head_dim": "attn.in_proj_weight"}
    for kind, suffix in kinds.items():
        if kind != "head_dim" and move.startswith("vision.head_dim"):
            continue
        values = [v for (name, _), v in trained.items() if name.endswith(suffix)]
        assert values and min(values) > 1e-4, (kind, values)
    assert min(trained.values()) > 1e-4, "every duplicated dimension separates"  # measured >= 9e-4
    assert max(trained.values()) > 3e-3  # measured 1.4e-2 (text) and 1.3e-2 (vision) after 5 steps at lr 1e-3
    print(f"{move}: max copy spread after {STEPS} steps, split 0: 0.0, split 0.5: {max(trained.values()):.3g}")


def unscaled(tmap: TensorMap) -> TensorMap:
    """The same gather without the scales: the source entry each target entry copies."""
    return TensorMap(tmap.source, tuple(IndexMap(m.src, torch.ones_like(m.scale), m.source_size)
                                        for m in tmap.dims), tmap.new)


def test_moments_follow_each_copys_share():
    """Split 0.5: every inherited coordinate's exp_avg is its source's times the coordinate's scale (its share,
    times sqrt(d'/d) on queries), exp_avg_sq times its square; so the first Adam direction m/sqrt(v) and the ratio
    exp_avg / weight of every copy are its source's."""
    move = "text.width*=2,vision.head_dim*=2,vision.layers+=1"
    src, opt, dst, dst_opt, plan, grown = grow_with_optimizer(tiny_arch(), move, split=0.5)
    params = dict(src.named_parameters())
    shares = 0
    for name, tmap in plan.items():
        if not isinstance(tmap.source, str):
            continue
        state = opt.state[params[tmap.source]]
        like = grown[name]["fp32"]
        scale = torch.ones_like(like, dtype=torch.float64)
        for d, m in enumerate(tmap.dims):
            shape = [1] * like.ndim
            shape[d] = -1
            scale = scale * m.scale.view(shape)
        shares += bool((scale != scale.flatten()[0]).any())
        raw = unscaled(tmap)
        avg, avg_sq = raw.moment(state["exp_avg"], 1, like), raw.moment(state["exp_avg_sq"], 2, like)
        weight = raw.weights(params[tmap.source].detach(), torch.zeros_like(like))
        keep = tmap.new_mask(like.ndim)
        keep = torch.ones_like(like, dtype=torch.bool) if keep is None else ~keep.expand_as(like)
        assert torch.allclose(grown[name]["exp_avg"][keep], (avg * scale.float())[keep], rtol=1e-6, atol=0), name
        assert torch.allclose(grown[name]["exp_avg_sq"][keep], (avg_sq * scale.float() ** 2)[keep], rtol=1e-5,
                              atol=0), name
        assert torch.allclose(grown[name]["fp32"][keep], (weight * scale.float())[keep], rtol=1e-6, atol=0), name
        live = keep & (avg_sq > 0)
        direction = grown[name]["exp_avg"] / grown[name]["exp_avg_sq"].sqrt()
        assert torch.allclose(direction[live], (avg / avg_sq.sqrt())[live], rtol=1e-5, atol=1e-7), name
    assert shares >= 10  # unequal shares were in play (c_fc, in_proj, out_proj, c_proj, projection columns)
    q_rows = plan["visual.transformer.resblocks.0.attn.in_proj_weight"].dims[0].scale[:32]  # head 0's queries
    assert torch.allclose(q_rows, 2 ** 0.5 * torch.tensor([0.25] * 16 + [0.75] * 16, dtype=torch.float64))


@pytest.mark.parametrize("move, copies", [("vision.layers*=2", {1: 0, 3: 1}),
                                          ("text.layers+=1,text.width*=2", {2: 1})])
def test_stacked_blocks_copy_their_predecessor_with_zero_residual_outputs(move, copies):
    """depth_init copy: each new block holds the weights, Adam moments (and EMA) of the old block it follows,
    through the same width maps as that block; attn.out_proj and mlp.c_proj (weight and bias) are zero with zero
    moments, so the block is the identity and the growth is function-preserving."""
    src, opt, dst, dst_opt, plan, grown = grow_with_optimizer(tiny_arch(), move, split=0.5, depth_init="copy")
    tower = "visual.transformer.resblocks." if move.startswith("vision") else "transformer.resblocks."
    names = [n[len(f"{tower}0."):] for n in plan if n.startswith(f"{tower}0.")]
    layers = dst.arch.vision.layers if tower.startswith("visual") else dst.arch.text.layers
    inherited = op.depth(layers - len(copies), layers)
    for new, follows in copies.items():
        assert inherited[new] is None and inherited[new - 1] == follows  # the old block right before it
        for suffix in names:
            mine, theirs = grown[f"{tower}{new}.{suffix}"], grown[f"{tower}{new - 1}.{suffix}"]
            if suffix.startswith(RESIDUAL_OUTPUTS):
                assert plan[f"{tower}{new}.{suffix}"].source is None
                assert all(not mine[s].any() for s in ("fp32", "exp_avg", "exp_avg_sq")), suffix
            else:
                assert plan[f"{tower}{new}.{suffix}"].source == f"{tower}{follows}.{suffix}"
                for s in ("fp32", "exp_avg", "exp_avg_sq"):
                    assert torch.equal(mine[s], theirs[s]), (suffix, s)
    batch = fixed_batch(src.arch, n=8, seed=5)
    with torch.no_grad():
        assert abs(loss_of(src, batch).item() - loss_of(dst, batch).item()) <= TOL
    # the EMA goes through the same plan (growth/writer.py): a copied block holds its predecessor's EMA
    ema_src = random_model(src.arch, seed=3)
    ema = grow_weights(plan, ema_src.state_dict(), fresh_init(dst.arch, 0), PIM(1.0))
    for new in copies:
        assert torch.equal(ema[f"{tower}{new}.ln_2.weight"], ema[f"{tower}{new - 1}.ln_2.weight"])
        assert not ema[f"{tower}{new}.mlp.c_proj.bias"].any()
    load(dst.arch, ema)  # a complete state dict of the grown model


def test_fresh_blocks_are_still_available():
    """depth_init fresh (plan_growth's default): new blocks hold θ_init except the zero residual outputs."""
    src_arch = tiny_arch()
    dst_arch = Moves.parse("vision.layers*=2").apply(src_arch)
    plan = plan_growth(src_arch, dst_arch, split=0.5, depth_init="fresh")
    init = fresh_init(dst_arch, 0)
    grown = grow_weights(plan, random_model(src_arch).state_dict(), init, PIM(1.0))
    for name in ("visual.transformer.resblocks.1.ln_1.weight", "visual.transformer.resblocks.3.attn.in_proj_weight"):
        assert plan[name].source is None and torch.equal(grown[name], init[name])
    assert not grown["visual.transformer.resblocks.1.attn.out_proj.weight"].any()


@pytest.mark.parametrize("kwargs, message", [({"split": 1.0}, "split must be"), ({"split": -0.1}, "split must be"),
                                             ({"split": True}, "split must be"),
                                             ({"depth_init": "stack"}, "depth_init must be one of copy, fresh")])
def test_plan_refuses_bad_settings(kwargs, message):
    with pytest.raises(GrowthError, match=message):
        plan_growth(tiny_arch(), tiny_arch(), **kwargs)


# ---- antithetic symmetry-breaking noise (PIM.noise) ------------------------------------------------------------
@pytest.mark.parametrize("split", [0.0, 0.5])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_antithetic_coefficients_cancel_in_the_readers_shares(split, k):
    m = IndexMap.tile(5, 5 * k)
    d, frac = m.antithetic(split), m.fractions(split)
    for i in range(5):
        copies = m.src == i
        assert abs(float((frac[copies] * d[copies]).sum())) < 1e-12  # the readers see no first-order change
        assert float(d[copies].abs().min()) > 0 or k == 3  # k = 3, split 0: the middle copy has c_r = 0
    assert not IndexMap.identity(4).antithetic(split).any()  # single units get no noise
    assert not m.fan_in(split).antithetic(split).any()  # nor the readers' (fan-in) side


@pytest.mark.parametrize("split", [0.0, 0.5])
def test_symmetry_noise_changes_the_function_only_at_second_order(split):
    """Loss change of the grown model with noise sigma: ~sigma^2 (10x sigma -> ~100x change), zero without."""
    src_arch = tiny_arch()
    src = random_model(src_arch)
    dst_arch = Moves.parse("vision.layers*=2,text.width*=2,vision.width*=2").apply(src_arch)
    batch = fixed_batch(src_arch, n=8, seed=1)
    with torch.no_grad():
        base = loss_of(src, batch).item()
    change = {}
    for sigma in (0.0, 0.01, 0.1):
        plan = plan_growth(src_arch, dst_arch, split=split, depth_init="copy")
        weights = grow_weights(plan, dict(src.named_parameters()), fresh_init(dst_arch, 0),
                               PIM(split=split, noise=sigma))
        with torch.no_grad():
            change[sigma] = abs(loss_of(load(dst_arch, weights), batch).item() - base)
    assert change[0.0] <= TOL
    if split == 0.0:  # second order: ~1/100 (measured 1.1e-4 at 0.01 against 1.4e-2 at 0.1)
        assert change[0.01] < 1e-3 and change[0.01] < 0.02 * change[0.1], change
    else:  # unequal shares cannot also keep the copies' sum, which LayerNorm's mean reads: a first-order term
        assert change[0.01] < 5e-3 and change[0.01] < 0.1 * change[0.1], change  # measured 2.5e-3, 4.4e-2


def test_symmetry_noise_is_seeded_and_checked():
    src_arch = tiny_arch()
    src = random_model(src_arch)
    dst_arch = Moves.parse("text.width*=2").apply(src_arch)
    plan = plan_growth(src_arch, dst_arch, split=0.5)
    grow = [grow_weights(plan, dict(src.named_parameters()), fresh_init(dst_arch, 0), PIM(noise=0.1, seed=s))
            for s in (0, 0, 1)]
    name = "transformer.resblocks.0.mlp.c_fc.weight"
    assert torch.equal(grow[0][name], grow[1][name]) and not torch.equal(grow[0][name], grow[2][name])
    for bad in (-0.1, 1.0, True):
        with pytest.raises(GrowthError, match="PIM noise"):
            PIM(noise=bad)
