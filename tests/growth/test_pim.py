"""PIM: θ = m·T(θ_src) + (1−m)·θ_init exactly, moments scaled by m and m², and the configured source used."""
import pytest
import torch

from growth.errors import GrowthError
from growth.pim import PIM, fresh_init
from growth.plan import plan_growth
from growth.space import Moves
from growth.transform import grow_parameter, grow_weights, source_of
from tests.growth.helpers import TOL, fixed_batch, load, max_diff, outputs, random_model, tiny_arch

MOVE = "vision.layers+=1,text.width*=2,vision.mlp_ratio*=2"


def test_blend_is_exact_with_a_fixed_seed():
    src_arch = tiny_arch()
    dst_arch = Moves.parse(MOVE).apply(src_arch)
    plan = plan_growth(src_arch, dst_arch)
    weights = random_model(src_arch).state_dict()
    moments = {n: torch.rand_like(w) for n, w in weights.items()}
    m = 0.7
    init = fresh_init(dst_arch, 3)
    assert all(torch.equal(init[n], fresh_init(dst_arch, 3)[n]) for n in init)  # the seed fixes θ_init
    inherited = grow_weights(plan, weights, init, PIM(m=1.0))  # T(θ_src): its new entries are θ_init's
    for name, tmap in plan.items():
        src = source_of(tmap, weights)
        got = grow_parameter(tmap, src, source_of(tmap, moments), source_of(tmap, moments), init[name],
                             PIM(m=m, seed=3))
        assert torch.equal(got["fp32"], m * inherited[name] + (1 - m) * init[name]), name
        assert torch.equal(got["exp_avg"], tmap.moment(source_of(tmap, moments), 1, init[name]) * m), name
        assert torch.equal(got["exp_avg_sq"], tmap.moment(source_of(tmap, moments), 2, init[name]) * (m * m)), name


def test_fresh_init_leaves_the_callers_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    fresh_init(tiny_arch(), 0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("source", ["ema", "last"])
def test_configured_source_is_inherited(source):
    """The writer reads the EMA or the last weights by `pim.source`; with m = 1 the grown model computes what
    that source computes."""
    src_arch = tiny_arch()
    dst_arch = Moves.parse(MOVE).apply(src_arch)
    last, ema = random_model(src_arch, seed=0), random_model(src_arch, seed=1)
    pim = PIM(m=1.0, source=source)
    chosen = ema if pim.source == "ema" else last
    grown = load(dst_arch, grow_weights(plan_growth(src_arch, dst_arch), chosen.state_dict(),
                                        fresh_init(dst_arch, 0), pim))
    batch = fixed_batch(src_arch)
    assert max_diff(outputs(chosen, batch), outputs(grown, batch)) <= TOL
    other = last if chosen is ema else ema
    assert max_diff(outputs(other, batch), outputs(grown, batch)) > 1e-3


@pytest.mark.parametrize("kwargs, message", [({"m": 0.0}, "in \\(0, 1\\]"), ({"m": 1.5}, "in \\(0, 1\\]"),
                                             ({"source": "best"}, "'ema' or 'last'"),
                                             ({"split": 1.0}, "PIM split must be a number in \\[0, 1\\)"),
                                             ({"split": -0.5}, "PIM split"), ({"split": "0.5"}, "PIM split"),
                                             ({"split": True}, "PIM split"),
                                             ({"depth_init": "stack"}, "PIM depth_init must be one of copy, fresh")])
def test_bad_pim_settings(kwargs, message):
    with pytest.raises(GrowthError, match=message):
        PIM(**kwargs)


def test_split_and_depth_init_defaults_and_record():
    """Symmetry breaking and stacking are on by default and recorded with the rest of PIM (the growth history
    holds PIM.to_dict()); the CLI's flags default to them and pass them through."""
    from growth.grow import parse_args
    assert (PIM().split, PIM().depth_init) == (0.5, "copy")
    assert PIM(split=0, depth_init="fresh").to_dict() == {"m": 1.0, "source": "ema", "seed": 0, "inherit": True,
                                                         "split": 0, "depth_init": "fresh", "noise": 0.0}
    base = ["--from", "ckpt", "--move", "vision.layers*=2", "--out", "new"]
    args = parse_args(base)
    assert (args.split, args.depth_init, args.noise) == (0.5, "copy", 0.0)
    args = parse_args([*base, "--split", "0", "--depth-init", "fresh", "--noise", "0.1"])
    assert (args.split, args.depth_init, args.noise) == (0.0, "fresh", 0.1)
