"""train.optimizer=master_adamw (pretrain/master_adamw.py): AdamW that keeps the fp32 masters itself, clipping on the
device. Against today's path (torch AdamW under DeepSpeed ZeRO-1 with DeepSpeed's clipping) in fp32 on the CPU, with
the clip threshold below every step's grad norm so that clipping acts; exact resume; 2-rank data parallelism; a bf16
run; the refusals.

Tolerance: fp32 on the CPU (bf16 rounding would hide what is compared). The two paths compute the same update but
sum the grad norm and average the gradients over ranks in another order, so they differ by rounding only; Adam
divides by sqrt(v), which makes a rounding difference in a near-zero gradient a visible one in its update.
Measured on the 2-core dev machine: 2 ranks x 4 steps, weights <= 1.3e-7 apart (absolute), grad norms <= 7.3e-7
relative, losses equal; the bounds (WEIGHT_ATOL 1e-6, NORM_RTOL 1e-5) leave room for other BLAS builds and thread
counts, as tests/train/test_hot_path.py does.
"""
import copy

import pytest
import torch

from pretrain import checkpoint as ckpt
from pretrain.config import ConfigError
from pretrain.master_adamw import NAME, MasterAdamW, check_resume, take_over
from pretrain.optim import param_groups
from tests.conftest import launch, metrics

STEPS, CLIP = 4, 0.05  # grad norms are 1-2 (unit runs) and 3.7-18 (the runs below): clipping acts at every step
WEIGHT_ATOL, NORM_RTOL, LOSS_RTOL = 1e-6, 1e-5, 1e-5
HYPER = dict(lr=1e-2, betas=(0.9, 0.98), eps=1e-6)


# ---- the optimizer alone (no DeepSpeed) -------------------------------------------------------------------------
def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3)).to(dtype)


def _train(model, opt, steps: int, clip=None) -> list[float]:
    """steps of a regression loss; clip(model) -> norm: the reference's clipping (None: opt clips itself)."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 8, generator=g), torch.randn(32, 3, generator=g)
    norms = []
    for _ in range(steps):
        for p in model.parameters():
            p.grad = None
        dtype = next(model.parameters()).dtype
        ((model(x.to(dtype)) - y.to(dtype)) ** 2).float().mean().backward()
        norms.append(clip(model) if clip else None)
        opt.step()
        if not clip:
            norms[-1] = float(opt._global_grad_norm)
    return norms


def _deepspeed_clip(max_norm: float):
    """DeepSpeed ZeRO-1/2's clipping (stage_1_and_2.py unscale_and_clip_grads): grads / max(1, (norm+1e-6)/max)."""
    def clip(model):
        grads = [p.grad for p in model.parameters()]
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)
        for g in grads:
            g.mul_(1.0 / scale)
        return float(norm)
    return clip


@pytest.mark.parametrize("fused", [False, True])
def test_same_steps_as_adamw_with_deepspeeds_clipping(fused):
    """foreach (the CPU default) and fused (CUDA's; torch has it on CPUs too), clipping acting at every step."""
    ref = _model()
    ref_norms = _train(ref, torch.optim.AdamW(param_groups(ref, 0.1), foreach=True, **HYPER), 5, _deepspeed_clip(CLIP))
    model = _model()
    norms = _train(model, MasterAdamW(param_groups(model, 0.1), max_norm=CLIP, fused=fused, **HYPER), 5)
    assert min(ref_norms) > CLIP
    assert norms == pytest.approx(ref_norms, rel=NORM_RTOL)
    for a, b in zip(ref.parameters(), model.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=WEIGHT_ATOL)


def test_bf16_model_fp32_masters_and_exact_resume():
    """The masters and moments stay fp32 (torch's load_state_dict would cast them to the bf16 parameters' dtype),
    the model holds the masters rounded to bf16, and a save/load after 3 steps continues bit for bit."""
    full = _model(torch.bfloat16)
    opt = MasterAdamW(param_groups(full, 0.1), max_norm=CLIP, **HYPER)
    _train(full, opt, 3)
    # a state dict refers to the live tensors, as torch's do (DeepSpeed writes it at once): copy it to keep it
    saved, saved_weights = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in full.parameters()]
    _train(full, opt, 2)

    resumed = _model(torch.bfloat16)
    with torch.no_grad():  # DeepSpeed loads the module's weights from its own file
        for p, w in zip(resumed.parameters(), saved_weights):
            p.copy_(w)
    opt2 = MasterAdamW(param_groups(resumed, 0.1), max_norm=CLIP, **HYPER)
    opt2.load_state_dict(saved)
    assert all(m.dtype == torch.float32 for m in opt2.masters)
    assert all(s["exp_avg"].dtype == torch.float32 for s in opt2.inner.state.values())
    _train(resumed, opt2, 2)
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    for group, views in zip(opt2.param_groups, opt2._master_views):
        assert all(torch.equal(p, v.to(torch.bfloat16)) for p, v in zip(group["params"], views))


def test_fused_step_reads_no_scalar():
    """No host sync in the step as CUDA runs it (fused, the clip factor a tensor): no op of it reads a scalar back
    (aten._local_scalar_dense is what .item(), float(t) and bool(t) call; on a GPU each waits for the device)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class ScalarReads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ScalarReads.count += func is torch.ops.aten._local_scalar_dense.default
            return func(*args, **(kwargs or {}))

    model = _model(torch.bfloat16)
    opt = MasterAdamW(param_groups(model, 0.1), max_norm=CLIP, fused=True, **HYPER)
    _train(model, opt, 1)  # the first step makes the AdamW state
    model(torch.randn(4, 8, dtype=torch.bfloat16)).float().pow(2).mean().backward()
    with ScalarReads():
        opt.step()
    assert ScalarReads.count == 0 and torch.is_tensor(opt._global_grad_norm)


def test_takes_bf16_and_clipping_from_deepspeed():
    ds, precision = take_over({"zero_optimization": {"stage": 0}, "gradient_clipping": 0.5, "bf16": {"enabled": True}},
                              tp=1, pp=1, universal_resume=False)
    assert precision.dtype == torch.bfloat16 and precision.max_norm == 0.5
    assert ds["bf16"] == {"enabled": False} and ds["gradient_clipping"] == 0.0  # no DeepSpeed wrapper, no 2nd clip


@pytest.mark.parametrize("ds, tp, pp, universal, match", [
    ({"zero_optimization": {"stage": 2}}, 1, 1, False, "needs ZeRO stage 0 .* this run has ZeRO-2"),
    ({"zero_optimization": {"stage": 1}}, 1, 1, False, "ZeRO-1"),
    ({"fp16": {"enabled": True}}, 1, 1, False, "no loss scaling"),
    ({}, 1, 2, False, "parallel.pp=1"),
    ({}, 2, 1, False, "parallel.tp=1"),
    ({}, 1, 1, True, "universal checkpoint"),
])
def test_refused_where_not_valid(ds, tp, pp, universal, match):
    with pytest.raises(ConfigError, match=f"train.optimizer={NAME} .*{match}"):
        take_over(ds, tp=tp, pp=pp, universal_resume=universal)


def test_resume_with_another_optimizer_is_refused():
    check_resume(NAME, NAME, "x")
    check_resume("auto", "torch", "x")
    for saved, wanted in ((NAME, "auto"), ("auto", NAME), (None, NAME)):
        with pytest.raises(ckpt.CheckpointError, match="resume with train.optimizer="):
            check_resume(saved, wanted, "x")


# ---- real DeepSpeed engines (deepspeed launcher, gloo) ---------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """2 ranks, fp32, clip 0.05: today's path (ZeRO-1, DeepSpeed clips) and master_adamw (ZeRO-0), saved at step 2
    and 4, then resumed from step 2."""
    base = tmp_path_factory.mktemp("master_adamw")
    common = (f"train.steps={STEPS}", f"ds.gradient_clipping={CLIP}", "train.save_every=2", "data.workers=1")
    launch(base / "zero1", tiny_data, *common, ds_config="ds_configs/zero1.json")
    launch(base / "master", tiny_data, *common, f"train.optimizer={NAME}", ds_config="ds_configs/zero0.json")
    launch(base / "resumed", tiny_data, *common, f"train.optimizer={NAME}", ds_config="ds_configs/zero0.json",
           resume=str(base / "master" / "checkpoints" / "step00000002"))
    return base


def _final(run) -> dict:
    return ckpt.full_state_dict(run / "checkpoints" / f"step{STEPS:08d}")


@pytest.mark.slow
def test_two_ranks_same_weights_as_zero1_with_clipping(runs):
    ref, new = metrics(runs / "zero1"), metrics(runs / "master")
    assert sorted(new) == list(range(1, STEPS + 1))
    assert all(ref[s]["grad_norm"] > CLIP for s in ref), "clipping must act at every step"
    assert [new[s]["grad_norm"] for s in new] == pytest.approx([ref[s]["grad_norm"] for s in ref], rel=NORM_RTOL)
    assert [new[s]["loss"] for s in new] == pytest.approx([ref[s]["loss"] for s in ref], rel=LOSS_RTOL)
    a, b = _final(runs / "zero1"), _final(runs / "master")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=WEIGHT_ATOL, msg=k)


@pytest.mark.slow
def test_two_ranks_resume_is_exact(runs):
    full, resumed = metrics(runs / "master"), metrics(runs / "resumed")
    assert sorted(resumed) == list(range(3, STEPS + 1))
    assert all(resumed[s]["loss"] == full[s]["loss"] and resumed[s]["grad_norm"] == full[s]["grad_norm"]
               for s in resumed)
    a, b = _final(runs / "master"), _final(runs / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (ckpt.read_model_states(r / "checkpoints" / f"step{STEPS:08d}")["optimizer"][NAME]
              for r in (runs / "master", runs / "resumed"))
    assert all(torch.equal(x, y) for x, y in zip(sa["masters"], sb["masters"]))


@pytest.mark.slow
def test_growth_refuses_its_checkpoint(runs, tmp_path):
    from growth.errors import GrowthError
    from growth.universal import to_universal
    with pytest.raises(GrowthError, match="no ZeRO optimizer files .*master_adamw"):
        to_universal(runs / "master" / "checkpoints" / f"step{STEPS:08d}", tmp_path / "u")


@pytest.mark.slow
def test_one_rank_bf16_run(tiny_data, tmp_path):
    """bf16 (DeepSpeed's config says so; the optimizer takes it over): the module trains in bf16, the masters stay
    fp32 and the module holds them rounded; the grad norm is reported."""
    launch(tmp_path, tiny_data, "train.steps=2", f"train.optimizer={NAME}", nproc=1,
           ds_config="ds_configs/zero0-bf16.json")
    m = metrics(tmp_path)
    assert all(isinstance(m[s]["grad_norm"], float) and m[s]["grad_norm"] > 0 for s in (1, 2))
    states = ckpt.read_model_states(tmp_path / "checkpoints" / "step00000002")
    module, masters = states["module"], states["optimizer"][NAME]["masters"]
    assert all(v.dtype == torch.bfloat16 for v in module.values()) and all(x.dtype == torch.float32 for x in masters)
    rounded = torch.cat([x.to(torch.bfloat16) for x in masters]).float().sort().values  # the same values, in the
    held = torch.cat([v.reshape(-1) for v in module.values()]).float().sort().values  # groups' order vs the module's
    assert torch.equal(rounded, held)
