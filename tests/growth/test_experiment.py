"""The GrowCLIP experiment driver (growth/experiment/, issue 11), and the growth options it needs: a growth space
restricted to some dimensions or without the shared encoder, and growth without inheritance.

The slow tests run the smoke plan of configs/experiments/growclip-offline.yaml (every arm, a few steps, tiny
Fashion-MNIST data, one deepspeed launch) and check the pipeline, not the outcome: every arm ran to its step
count, the equal-FLOPs rule held, the forks and dependencies were honoured, the report and its PNGs were
written, and a second invocation skips the finished arms and redoes only what is missing.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from growth.candidates import Budget, generate
from growth.errors import GrowthError
from growth.experiment import arms as A
from growth.experiment.plan import PlanError, load_plan
from growth.experiment.report import compute_to_reach, write_report
from growth.pim import PIM
from growth.search import SearchConfig  # noqa: F401 - the search module must import with the new options
from pretrain.arch import Architecture
from pretrain.config import ConfigError, load_run_config
from pretrain.parallel.layout import Layout
from tests.conftest import ROOT

PLAN = ROOT / "configs" / "experiments" / "growclip-offline.yaml"
TINY = Architecture.from_dict({
    "vision": {"layers": 4, "width": 128, "heads": 4, "patch": 7, "image_size": 28},
    "text": {"layers": 4, "width": 128, "heads": 4, "vocab": 4096, "context": 24},
    "shared": {"layers": 0, "width": 128, "heads": 4}, "embed_dim": 128})


# ---- the growth options (fast) -------------------------------------------------------------------------------
def families(budget: Budget) -> set[str]:
    return {c.family for c in generate(TINY, 1.5, budget, Layout())[0]}


def test_the_space_can_be_restricted_to_some_dimensions():
    assert families(Budget(dimensions=("layers",))) == {"vision.layers", "text.layers"}
    assert families(Budget(dimensions=["layers", "compound"])) == {"vision.layers", "text.layers",
                                                                   "text.layers+vision.layers"}
    assert families(Budget(dimensions=("shared",))) == {"shared"}
    assert families(Budget(dimensions=("text.width", "vision.heads"))) == {"text.width", "vision.heads"}
    _, rejected = generate(TINY, 1.5, Budget(dimensions=("shared",)), Layout())
    assert any("not in the growth space" in r["reason"] for r in rejected)
    with pytest.raises(GrowthError, match="unknown"):
        Budget(dimensions=("depth",))


def test_the_shared_encoder_can_be_left_out():
    everything, without = families(Budget()), families(Budget(shared=False))
    assert any(f.startswith("shared") or "+shared" in f for f in everything)
    assert without == {f for f in everything if "shared" not in f}
    assert families(Budget(dimensions=("shared", "layers"), shared=False)) == {"vision.layers", "text.layers"}


def test_no_inheritance_is_a_fresh_start():
    pim = PIM(inherit=False)
    mapped, init = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.equal(pim.blend(mapped, init), init)
    avg, sq = pim.moments(torch.ones(3, 4), torch.ones(3, 4))
    assert not avg.any() and not sq.any()
    assert PIM().to_dict()["inherit"] is True and pim.to_dict()["inherit"] is False


def test_growth_keys_of_the_run_config(tmp_path):
    tok = tmp_path / "tok.model"
    tok.write_bytes(b"x")  # validation only checks that it exists
    base = [f"data.tokenizer={tok}", "data.shards=data/shards/x"]
    cfg = load_run_config(None, base + ["growth.dimensions=[layers,shared]", "growth.shared_encoder=false",
                                        "growth.pim_inherit=false"])
    assert cfg.growth.dimensions == ["layers", "shared"] and cfg.growth.shared_encoder is False
    from pretrain.growth_loop import budget_of, pim_of
    assert budget_of(cfg, 1).dimensions == ("layers", "shared") and budget_of(cfg, 1).shared is False
    assert pim_of(cfg).inherit is False and pim_of(load_run_config(None, base)).inherit is True
    assert budget_of(load_run_config(None, base), 1).dimensions is None
    with pytest.raises(ConfigError, match="growth.dimensions"):
        load_run_config(None, base + ["growth.dimensions=[depth]"])
    with pytest.raises(ConfigError, match="pim_inherit"):
        load_run_config(None, base + ["growth.pim_inherit=maybe"])


# ---- plans, budgets, report arithmetic (fast) ----------------------------------------------------------------
def test_the_plans_load_and_dependencies_come_first():
    full, smoke = load_plan(PLAN), load_plan(PLAN, smoke=True, variables={"TINY": "/tmp/tiny"})
    names = [a.name for a in full.arms]
    for a in full.arms:
        if a.needs:
            assert names.index(a.needs) < names.index(a.name)
    assert {a.base for a in full.arms} == {a.base for a in smoke.arms}  # every arm in the smoke plan
    assert smoke.seeds == [0] and smoke.launch == "inprocess"
    assert any("/tmp/tiny/shards" in o for o in smoke.overrides)
    assert len([a for a in full.arms if a.base == "auto"]) >= 3


def test_bad_plans_name_the_problem(tmp_path):
    def plan(arms, **top):
        p = tmp_path / "p.yaml"
        p.write_text(json.dumps({"arms": arms, **top}))
        return p
    with pytest.raises(PlanError, match="needs `ref:`"):
        load_plan(plan([{"name": "a", "kind": "fixed_final"}]))
    with pytest.raises(PlanError, match="only change growth"):
        load_plan(plan([{"name": "a"}, {"name": "b", "fork": "a", "overrides": ["train.lr=1"]}]))
    with pytest.raises(PlanError, match="does not run"):
        load_plan(plan([{"name": "a", "seeds": [0]}, {"name": "b", "kind": "hand", "ref": "a", "seeds": [1]}],
                       seeds=[0, 1]))
    with pytest.raises(PlanError, match="unknown key"):
        load_plan(plan([{"name": "a", "colour": "red"}]))


def test_steps_for_an_equal_budget():
    sps = 128
    per = 3 * 0.05e9 * sps  # FLOPs of one step at 0.05 forward GFLOPs per sample
    assert A.steps_for_budget(600 * per, sps, [(0, 0.05)]) == 600
    assert A.steps_for_budget(600 * per, sps, [(0, 0.1)]) == 300
    # 200 steps at 0.05, then 0.1: (600 - 200) * per / (2 per) = 200 more steps
    assert A.steps_for_budget(600 * per, sps, [(0, 0.05), (200, 0.1)]) == 400
    # a budget spent before the growth step never enters the second segment
    assert A.steps_for_budget(100 * per, sps, [(0, 0.05), (200, 0.1)]) == 100


def test_compute_to_reach_interpolates_the_curve():
    rows = [{"flops": 0.0, "mean": 3.0}, {"flops": 10.0, "mean": 2.0}, {"flops": 20.0, "mean": 1.0}]
    assert compute_to_reach(rows, 1.5) == pytest.approx(15.0)
    assert compute_to_reach(rows, 3.5) == 0.0
    assert compute_to_reach(rows, 0.5) is None


# ---- the smoke plan end to end (slow) --------------------------------------------------------------------------
def run_driver(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "growth.experiment", "--plan", str(PLAN), "--smoke", "--out",
                           str(out), *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"driver failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def smoke(tiny_data, tmp_path_factory):
    """The smoke plan, on the session's tiny data (the recipe of the plan's tiny_data: 2,400 pairs, 8 shards,
    512 ids), linked where the driver looks for it."""
    out = tmp_path_factory.mktemp("experiment") / "smoke"
    (out / "tiny-data").mkdir(parents=True)
    (out / "tiny-data" / "shards").symlink_to(tiny_data["shards"])
    (out / "tiny-data" / "tok").symlink_to(Path(tiny_data["tokenizer"]).parent)
    run_driver(out)
    return out


@pytest.mark.slow
def test_every_arm_ran_with_the_equal_compute_rule(smoke):
    plan = load_plan(PLAN, smoke=True, variables={"TINY": str(smoke / "tiny-data")})
    trains = {}
    for arm in plan.arms:
        run = smoke / arm.name
        for name in ("train.json", "heldout.jsonl", "eval.json", "metrics.jsonl"):
            assert (run / name).is_file(), f"{arm.name}: no {name}"
        t = trains[arm.name] = json.loads((run / "train.json").read_text())
        assert t["final_step"] == t["steps"] and t["kind"] == arm.kind
        rows = [json.loads(line) for line in (run / "heldout.jsonl").read_text().splitlines()]
        assert len(rows) >= 2 and rows[-1]["step"] == t["steps"] and all(r["loss"] for r in rows)
        assert [r["flops"] for r in rows] == sorted(r["flops"] for r in rows)
        assert json.loads((run / "eval.json").read_text())[0]["step"] == t["steps"]
        assert [p.name for p in (run / "checkpoints").glob("step*")] == [f"step{t['steps']:08d}"]  # pruned
    auto = trains["auto-s0"]
    assert auto["growths"] and auto["growths"][0]["searched"] and auto["flops_total"] > 0
    for name in ("fixed-final-s0", "fixed-small-s0", "hand-s0"):  # B within half a step at the final FLOPs
        t = trains[name]
        half_step = 1.5 * t["gflops_final"] * 1e9 * t["samples_per_step"]
        assert t["budget_flops"] == auto["flops_total"] and abs(t["flops_total"] - auto["flops_total"]) <= half_step
    assert trains["fixed-final-s0"]["final_arch"] == auto["final_arch"] == trains["hand-s0"]["final_arch"]
    assert trains["fixed-small-s0"]["final_arch"] == auto["start_arch"]
    assert [g["searched"] for g in trains["hand-s0"]["growths"]] == [False]
    boundary = auto["stage_steps"][0]
    auto_rows = [json.loads(line) for line in (smoke / "auto-s0" / "heldout.jsonl").read_text().splitlines()]
    for name, t in trains.items():
        if t["fork"]:  # forks start at auto's first boundary, inheriting its held-out points up to there
            rows = [json.loads(line) for line in (smoke / name / "heldout.jsonl").read_text().splitlines()]
            inherited = [r for r in rows if r.get("inherited_from") == "auto-s0"]
            assert [r["step"] for r in inherited] == [r["step"] for r in auto_rows if r["step"] <= boundary]
            assert boundary in [r["step"] for r in inherited] and rows[-1]["step"] == t["steps"]
            assert any("--resume " + str(smoke / "forks" / "auto-s0") in c for c in t["commands"])
    families = {"only-depth-s0": {"vision.layers", "text.layers"}, "only-shared-s0": {"shared"}}
    for name, allowed in families.items():
        for g in trains[name]["growths"]:
            touched = {"shared" if m.startswith("shared") else m.split("+=")[0].split("*=")[0].split("=")[0]
                       for m in g["move"].split(",")}
            assert touched <= allowed, (name, g["move"])
    assert all("shared" not in g["move"] for g in trains["no-shared-s0"]["growths"])
    assert trains["no-inherit-s0"]["growths"][0]["pim"]["inherit"] is False
    assert trains["pim-m0.9-s0"]["growths"][0]["pim"]["m"] == 0.9


@pytest.mark.slow
def test_the_report_and_its_pngs_are_written(smoke, tmp_path):
    md = write_report(smoke, tmp_path / "results" / "smoke.md")
    text = md.read_text()
    assert "SMOKE RESULTS" in text and "## Main arms" in text and "## Ablations" in text and "### Commands" in text
    for png in ("loss_vs_flops.png", "zeroshot_avg.png", "timeline_auto.png"):
        data = (tmp_path / "results" / "smoke" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f"smoke/{png}" in text
    # the human-written discussion survives a rewrite
    md.write_text(text.replace("<!-- notes -->\n", "<!-- notes -->\nkept\n"))
    assert "<!-- notes -->\nkept\n" in write_report(smoke, md).read_text()


@pytest.mark.slow
def test_a_second_invocation_skips_finished_arms(smoke):
    """Finished arms are skipped; an arm without eval.json is evaluated again without training; an arm without
    train.json resumes from its latest checkpoint (`--resume latest`); a forked arm whose folder is gone starts
    again from the fork."""
    stamps = {p: p.stat().st_mtime_ns for p in smoke.glob("*/eval.json")}
    (smoke / "pim-m0.9-s0" / "eval.json").unlink()
    for name in ("train.json", "eval.json"):
        (smoke / "fixed-small-s0" / name).unlink()
    import shutil
    shutil.rmtree(smoke / "only-mlp-s0")
    proc = run_driver(smoke)
    redone = {"pim-m0.9-s0", "fixed-small-s0", "only-mlp-s0"}
    for p, stamp in stamps.items():
        if p.parent.name not in redone:
            assert p.stat().st_mtime_ns == stamp, f"{p.parent.name} was run again"
            assert f"{p.parent.name}: finished before, skipped" in proc.stdout
    for name in redone:
        assert (smoke / name / "eval.json").is_file()
    assert (smoke / "pim-m0.9-s0" / "commands.txt").read_text().count("\n") == 1  # not trained again
    commands = (smoke / "fixed-small-s0" / "commands.txt").read_text().splitlines()
    assert len(commands) == 2 and "--resume latest" in commands[1]
    assert json.loads((smoke / "fixed-small-s0" / "train.json").read_text())["final_step"] > 0
    assert "--resume " + str(smoke / "forks" / "auto-s0") in (smoke / "only-mlp-s0" / "commands.txt").read_text()
