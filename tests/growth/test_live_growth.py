"""Growth from the running engine (growth/live.py, issue 19 item 5): two 2-rank ZeRO-2 runs grow at step 2 by a
compound move (depth, width, heads) with PIM m = 0.9 from the EMA and symmetry noise, one live (the default: no save
before the growth, no ds_to_universal), one through the saved checkpoint (growth.live=false). The grown universal
checkpoints are equal file for file, the continuations equal loss for loss; a kill inside the live growth or
before the first save after it resumes to the uninterrupted run's weights bit for bit."""
import json
import os
import signal
import time

import pytest
import torch

from growth import universal
from growth.live import PAUSE_ENV, PAUSE_MARKER, assign
from growth.plan import plan_growth
from growth.space import target_architecture
from pretrain import checkpoint as ckpt
from pretrain.arch import Architecture
from tests.conftest import launch, metrics

STEPS, GROW_AT = 4, 2
MOVE = "vision.layers+=1,text.width*=2,vision.heads*=2"
RUN = [f"train.steps={STEPS}", "train.lr=0.002", "train.warmup=1", f"growth.at_steps=[{GROW_AT}]",
       f'growth.moves=["{MOVE}"]', "growth.pim_m=0.9", "growth.symmetry_noise=0.05", "train.save_every=3"]


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    launch(root / "live", tiny_data, *RUN)
    launch(root / "saved", tiny_data, *RUN, "growth.live=false")
    return root


def grown(run):
    return run / "grown" / f"step{GROW_AT}" / f"step{GROW_AT:08d}"


@pytest.mark.slow
def test_live_growth_writes_the_checkpoint_the_saved_path_writes(runs):
    live, saved = grown(runs / "live"), grown(runs / "saved")
    params = sorted(p.name for p in (saved / "zero").iterdir() if p.is_dir())
    assert params == sorted(p.name for p in (live / "zero").iterdir() if p.is_dir()) and params
    for name in params:
        for f in sorted((saved / "zero" / name).glob("*.pt")):
            a, b = universal.load(f), universal.load(live / "zero" / name / f.name)
            if isinstance(a, dict):
                assert a.keys() == b.keys(), (name, f.name)
                assert torch.equal(a["param"], b["param"]), (name, f.name)
            else:
                assert torch.equal(a, b), (name, f.name)
    a, b = ckpt.read_client_state(saved), ckpt.read_client_state(live)
    assert a["ema"]["shadow"].keys() == b["ema"]["shadow"].keys()
    assert all(torch.equal(v, b["ema"]["shadow"][k]) for k, v in a["ema"]["shadow"].items())
    strip = [{k: v for k, v in h.items() if k != "source"} for h in a["growth_history"]]
    assert strip == [{k: v for k, v in h.items() if k != "source"} for h in b["growth_history"]]
    assert b["growth_history"][-1]["source"].startswith("live:")
    for key in ("step", "data", "samples", "architecture", "layout", "tokenizer_sha256"):
        assert a[key] == b[key], key
    sa = universal.load(saved / "zero" / universal.OPTIMIZER_STATE, universal.optimizer_state_globals())
    sb = universal.load(live / "zero" / universal.OPTIMIZER_STATE, universal.optimizer_state_globals())
    assert sa.keys() == sb.keys() and sa["param_groups"] == sb["param_groups"]


@pytest.mark.slow
def test_live_growth_continues_as_the_saved_path_without_a_save_before_it(runs):
    live, saved = metrics(runs / "live"), metrics(runs / "saved")
    assert sorted(live) == list(range(1, STEPS + 1))
    assert [live[s]["loss"] for s in live] == [saved[s]["loss"] for s in live]
    assert not (runs / "live" / "checkpoints" / f"step{GROW_AT:08d}").exists()  # no save before the growth
    assert (runs / "saved" / "checkpoints" / f"step{GROW_AT:08d}").is_dir()
    a = ckpt.full_state_dict(runs / "live" / "checkpoints" / f"step{STEPS:08d}")
    b = ckpt.full_state_dict(runs / "saved" / "checkpoints" / f"step{STEPS:08d}")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pauses = {run: [json.loads(line) for line in (runs / run / "growth_pauses.jsonl").read_text().splitlines()]
              for run in ("live", "saved")}
    assert [(p["step"], p["kind"]) for p in pauses["live"]] == [(GROW_AT, "live")]
    assert [(p["step"], p["kind"]) for p in pauses["saved"]] == [(GROW_AT, "checkpoint")]
    assert all(p["pause_s"] > 0 for ps in pauses.values() for p in ps)


def killed_at(phase: str):
    """A while_running callback: once rank 0 prints the pause marker of `phase`, kill -9 the run's whole group
    (launcher and both ranks, as on a node that dies)."""
    def kill(proc):
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            if f"{PAUSE_MARKER} {phase}" in proc.output_path.read_text(errors="replace"):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.2)
    return kill


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["written", "restart"])
def test_a_kill_inside_a_live_growth_resumes_to_the_same_weights(runs, tiny_data, tmp_path, phase, monkeypatch):
    """Killed while the grown checkpoint is written (not yet renamed: the resume starts over, no save exists) or
    after it is in place and before the new engine trains (the resume goes on from OUT/grown/step2): the run ends
    on the uninterrupted run's weights and losses, each step logged once, the growth taken once."""
    run = tmp_path / "run"
    monkeypatch.setenv(PAUSE_ENV, f"{phase}:60")
    launch(run, tiny_data, *RUN, check=False, while_running=killed_at(phase))
    monkeypatch.delenv(PAUSE_ENV)
    assert not (run / "checkpoints" / f"step{STEPS:08d}").exists()
    assert (run / "grown" / f"step{GROW_AT}").is_dir() == (phase == "restart")
    assert not list((run / "grown").glob(".*tmp*")) or phase == "written"  # a leftover temp folder is never read
    launch(run, tiny_data, *RUN, resume="latest")
    assert not list((run / "grown").glob(".*"))  # the killed growth's temporary folder is cleared by the next one
    final = ckpt.full_state_dict(run / "checkpoints" / f"step{STEPS:08d}")
    reference = ckpt.full_state_dict(runs / "live" / "checkpoints" / f"step{STEPS:08d}")
    assert final.keys() == reference.keys() and all(torch.equal(final[k], reference[k]) for k in final)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, STEPS + 1))
    assert [json.loads(line)["loss"] for line in lines] == [r["loss"] for r in metrics(runs / "live").values()]
    history = ckpt.read_client_state(run / "checkpoints" / f"step{STEPS:08d}")["growth_history"]
    assert [h["source_step"] for h in history] == [GROW_AT]


def test_assign_keeps_each_source_on_one_rank_and_balances():
    arch = Architecture.from_dict({**Architecture().to_dict()})
    dst, _ = target_architecture(arch, "vision.layers*=2,text.width*=2")
    plan = plan_growth(arch, dst)
    from pretrain.model import CLIP
    with torch.device("meta"):
        sizes = {n: p.numel() for n, p in CLIP(dst).named_parameters()}
    owner = assign(plan, sizes, 3)
    assert owner == assign(plan, sizes, 3) and set(owner) == set(plan)
    by_source = {}
    for name, tmap in plan.items():
        if isinstance(tmap.source, str):
            by_source.setdefault(tmap.source, set()).add(owner[name])
    assert all(len(ranks) == 1 for ranks in by_source.values())
    load = [sum(sizes[n] for n in owner if owner[n] == r) for r in range(3)]
    assert max(load) - min(load) <= max(sizes.values())
