"""The growth-pays experiment (issue 18): its plan, the equal-steps protocol, the report's arithmetic (capacity
check, compute to target, tie rule), and the --smoke plan end to end (every arm, summary.json, the PNGs). The
smoke run checks the pipeline, not the outcome: its numbers mean nothing."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from growth.experiment import pays
from growth.experiment.driver import check_device
from growth.experiment.plan import PlanError, load_plan
from growth.experiment.report import compute_to_reach, write_report
from tests.conftest import ROOT

PLAN = ROOT / "configs" / "experiments" / "growth-pays.yaml"
OFFLINE = ROOT / "configs" / "experiments" / "growth-pays-offline.yaml"
GPU = ROOT / "configs" / "experiments" / "growth-pays-gpu.yaml"


def test_the_plans_put_the_capacity_check_first():
    for path in (PLAN, OFFLINE):
        plan = load_plan(path)
        assert plan.compute == "equal_steps" and plan.target == "fixed-target" and plan.start == "fixed-start"
        first = [a.base for a in plan.arms[:6]]
        assert first == ["fixed-target"] * 3 + ["fixed-start"] * 3  # before any growth arm
        assert plan.seeds == [0, 1, 2]
        hand = next(a for a in plan.arms if a.base == "hand")
        assert hand.kind == "fixed" and any(o.startswith("growth.at_steps=[") for o in hand.overrides)
    smoke = load_plan(PLAN, smoke=True, variables={"TINY": "/tmp/tiny"})
    kinds = {(a.kind, bool(a.fork)) for a in load_plan(PLAN).arms}
    assert {(a.kind, bool(a.fork)) for a in smoke.arms} == kinds  # one arm of every mechanism
    assert {a.base for a in smoke.arms} < {a.base for a in load_plan(PLAN).arms}
    assert "growth.at_steps=[3]" in next(a for a in smoke.arms if a.base == "hand").overrides  # vars: GROW_AT


def test_the_gpu_plan_loads_and_needs_a_gpu():
    plan = load_plan(GPU)
    assert plan.nproc == 1 and plan.launch == "inprocess" and plan.target == "fixed-target"
    assert {a.base for a in plan.arms} == {"fixed-target", "fixed-start", "auto", "hand"}
    if not torch.cuda.is_available():
        with pytest.raises(PlanError, match="no CUDA device"):
            check_device("cuda")
    with pytest.raises(PlanError, match="cpu or cuda"):
        check_device("tpu")


def test_bad_protocol_keys_name_the_problem(tmp_path):
    base = PLAN.read_text()
    cases = {"compute: equal_steps": ("compute: equal_time", "compute must be one of"),
             "target: fixed-target": ("target: nobody", "target 'nobody' is not an arm"),
             "vars: {GROW_AT: 200, GROW_EARLY: 100, GROW_LATE: 400}": ("vars: [1, 2]", "vars is a mapping")}
    for old, (new, message) in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(base.replace(old, new))
        with pytest.raises(PlanError, match=message):
            load_plan(bad)


def run(seed, final, flops, kind="fixed", curve=None):
    rows = curve or [{"flops": 0.0, "mean": 5.0, "loss": {"a": 5.0}}, {"flops": flops, "mean": final,
                                                                     "loss": {"a": final}}]
    return {"seed": seed, "kind": kind, "final_loss": rows[-1]["mean"], "heldout": rows,
            "train": {"flops_total": flops, "final_arch": None, "gflops_final": 1.0}}


def test_compute_to_target_and_the_tie_rule():
    target = [run(s, 1.0, 100.0) for s in range(3)]
    # reaches 1.0 at half of the target's FLOPs on every seed (a straight curve from 5.0 to 0.6 over 55 FLOPs)
    grown = [run(s, 0.6, 55.0, "auto", [{"flops": 0.0, "mean": 5.0}, {"flops": 50.0, "mean": 1.0},
                                         {"flops": 55.0, "mean": 0.6}]) for s in range(3)]
    never = [run(s, 1.2, 40.0, "fixed") for s in range(3)]
    ctt = pays.compute_to_target({"fixed-target": target, "auto": grown, "fixed-start": never}, "fixed-target",
                                 compute_to_reach)
    assert ctt["fixed-target"] == {s: (1.0, 1.0, 1.0) for s in range(3)}
    assert all(abs(v[0] - 0.5) < 1e-12 for v in ctt["auto"].values())
    assert all(v[:2] == (None, 0.4) for v in ctt["fixed-start"].values())
    assert ctt["fixed-start"][0][2] == pytest.approx(95.0 / 40.0)  # the target reaches 1.2 at 95 of its 100 FLOPs
    assert pays.paired_verdict([-0.5, -0.4, -0.45]) == "better"
    assert pays.paired_verdict([-0.1, 0.15, 0.0]) == "tie"
    assert pays.paired_verdict([0.2, 0.3, 0.25]) == "worse"
    assert pays.paired_verdict([-0.5]) == "n/a"
    assert pays.loss_at(grown[0]["heldout"], 25.0) == pytest.approx(3.0)


def test_the_capacity_check_needs_three_seeds_beyond_noise():
    start = [run(s, 2.0 + 0.01 * s, 10.0) for s in range(3)]
    target = [run(s, 1.5, 70.0) for s in range(3)]
    assert pays.capacity(start, target, ["a"])["holds"]
    close = [run(s, 1.5 + (0.3 if s == 0 else -0.3), 10.0) for s in range(3)]
    assert not pays.capacity(close, target, ["a"])["holds"]  # target not lower on every seed
    assert not pays.capacity(start[:2], target[:2], ["a"])["holds"]  # two seeds are not enough


# ---- the smoke plan end to end (slow) --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("growth_pays") / "smoke"
    (out / "tiny-data").mkdir(parents=True)
    (out / "tiny-data" / "shards").symlink_to(tiny_data["shards"])
    (out / "tiny-data" / "tok").symlink_to(Path(tiny_data["tokenizer"]).parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "growth.experiment", "--plan", str(PLAN), "--smoke", "--out",
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"driver failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return out


@pytest.mark.slow
def test_smoke_runs_every_arm_at_equal_steps_and_writes_the_report(smoke, tmp_path):
    plan = load_plan(PLAN, smoke=True, variables={"TINY": str(smoke / "tiny-data")})
    for arm in plan.arms:
        train = json.loads((smoke / arm.name / "train.json").read_text())
        assert train["final_step"] == 6, arm.name  # equal steps: every arm trains the plan's steps
        assert (smoke / arm.name / "heldout.jsonl").is_file() and (smoke / arm.name / "eval.json").is_file()
    hand = json.loads((smoke / "hand-s0" / "train.json").read_text())
    target = json.loads((smoke / "fixed-target-s0" / "train.json").read_text())
    assert [g["step"] for g in hand["growths"]] == [3] and hand["final_arch"] == target["final_arch"]
    auto = json.loads((smoke / "auto-s0" / "train.json").read_text())
    assert auto["growths"]  # the smoke plan forces growth
    final = json.loads((smoke / "fixed-final-s0" / "train.json").read_text())
    assert final["start_arch"] == auto["final_arch"] and not final["growths"]
    md = write_report(smoke, tmp_path / "results" / "growth-pays.md")
    text = md.read_text()
    assert text.index("## 1. Capacity check") < text.index("## 2. Compute to reach") < text.index("## Main arms")
    figs = tmp_path / "results" / "growth-pays"
    for png in ("compute_to_target.png", "loss_by_set.png", "loss_vs_flops.png", "timeline_auto.png"):
        assert (figs / png).read_bytes()[:4] == b"\x89PNG", png
    summary = json.loads((figs / "summary.json").read_text())
    for key in ("compute_to_target_mean", "compute_to_target_std", "seeds", "auto_beats_target_at_equal_flops",
                "commit", "capacity_check_holds"):
        assert key in summary, key
    assert summary["seeds"] == [0] and summary["commit"]
    assert summary["auto_beats_target_at_equal_flops"] in (True, False, "tie", "n/a")
