"""The lr schedule (pretrain/schedule.py): cosine and wsd values, the re-warm after a growth; real 2-rank runs
that grow at the start of the wsd decay (re-warm 2): metrics.jsonl's lr follows `lr_at`, the growth warns, a stop
inside the re-warm (and the decay) resumes exactly, and a trainer started from the grown checkpoint updates at
the re-warmed lr."""
import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch

from pretrain.config import TrainConfig
from pretrain.schedule import build_scheduler, decay_start, growth_warning, lr_at, set_lr
from tests.conftest import ROOT, launch, metrics, rank_env

WSD = TrainConfig(lr=0.01, min_lr=0.001, warmup=2, steps=20, lr_schedule="wsd", decay_frac=0.25)  # decay from 15
COSINE = TrainConfig(lr=0.01, min_lr=0.0, warmup=2, steps=12)


def lrs(train, steps, growth_steps=(), rewarm=0):
    return [lr_at(train, s, growth_steps, rewarm) for s in steps]


def test_wsd_warms_up_holds_then_decays_linearly_to_min_lr():
    assert decay_start(WSD) == 15
    assert lrs(WSD, [0, 1, 2, 9, 14, 15]) == pytest.approx([0.005, 0.01, 0.01, 0.01, 0.01, 0.01], rel=1e-12)
    assert lrs(WSD, [16, 17, 19, 20, 25]) == pytest.approx([0.0082, 0.0064, 0.0028, 0.001, 0.001], rel=1e-12)
    assert decay_start(dataclasses.replace(WSD, decay_frac=0.0)) == 20
    assert lr_at(dataclasses.replace(WSD, decay_frac=0.0), 19) == pytest.approx(0.01, rel=1e-12)


def test_cosine_is_the_former_schedule_and_decays_from_the_end_of_warmup():
    assert decay_start(COSINE) == 2
    assert lrs(COSINE, [0, 1, 2, 7, 12]) == pytest.approx([0.005, 0.01, 0.01, 0.005, 0.0], rel=1e-12, abs=1e-15)
    cosine = [0.005, 0.01] + [0.005 * (1 + math.cos(math.pi * min(1, (s - 2) / 10))) for s in range(2, 15)]
    assert lrs(COSINE, range(15)) == pytest.approx(cosine, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("train", [WSD, COSINE], ids=["wsd", "cosine"])
def test_rewarm_zero_or_no_growth_is_the_plain_schedule(train):
    plain = lrs(train, range(25))
    assert lrs(train, range(25), [3, 6], 0) == plain
    assert lrs(train, range(25), (), 4) == plain


def test_rewarm_ramps_the_scheduled_lr_after_a_growth():
    """Growth after step 6, re-warm 3: positions 6, 7, 8 (the updates of steps 7-9) run at 1/4, 2/4, 3/4."""
    assert lrs(WSD, [5, 6, 7, 8, 9, 10], [6], 3) == pytest.approx([0.01, 0.0025, 0.005, 0.0075, 0.01, 0.01],
                                                                   rel=1e-12)
    # inside the decay the ramp multiplies the decaying value
    assert lrs(WSD, [15, 16, 17, 18, 19], [16], 3) == pytest.approx(
        [0.01, 0.0082 / 4, 0.0064 * 2 / 4, 0.0046 * 3 / 4, 0.0028], rel=1e-12)
    cos7, cos8 = 0.005, 0.005 * (1 + math.cos(0.6 * math.pi))
    assert lrs(COSINE, [6, 7, 8], [7], 1) == pytest.approx([lr_at(COSINE, 6), cos7 / 2, cos8], rel=1e-12)
    # close growths: the latest one's ramp, not a product
    assert lrs(WSD, [6, 7, 8, 9, 10, 11], [6, 8], 3) == pytest.approx(
        [0.0025, 0.005, 0.0025, 0.005, 0.0075, 0.01], rel=1e-12)


def test_a_checkpoints_train_dict_reads_like_the_dataclass():
    full = dataclasses.asdict(WSD)
    assert lrs(full, range(22), [6], 3) == lrs(WSD, range(22), [6], 3) and decay_start(full) == 15
    partial = {"lr": 0.01, "steps": 40, "lr_schedule": "wsd"}  # missing keys: TrainConfig's defaults
    assert lrs(partial, range(42)) == lrs(TrainConfig(lr=0.01, steps=40, lr_schedule="wsd"), range(42))


def test_scheduler_gives_lr_at_and_set_lr_starts_the_rewarm_after_a_restore():
    """DeepSpeed's order on resume: the scheduler's position, then the optimizer, whose saved lr is that of the
    pre-growth run; set_lr replaces it by the re-warmed value the first update after the growth needs."""
    def run(growth_steps, rewarm):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=WSD.lr)
        return opt, build_scheduler(opt, WSD, growth_steps, rewarm)

    opt, sched = run([6], 3)
    seen = [sched.get_last_lr()[0]]
    for _ in range(20):
        opt.step()
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen == lrs(WSD, range(21), [6], 3)

    before_opt, before = run((), 0)
    for _ in range(6):
        before_opt.step()
        before.step()
    grown_opt, grown = run([6], 3)
    grown.load_state_dict(before.state_dict())
    grown_opt.load_state_dict(before_opt.state_dict())
    assert grown.last_epoch == 6 and grown_opt.param_groups[0]["lr"] == pytest.approx(0.01)
    set_lr(grown)
    assert grown_opt.param_groups[0]["lr"] == grown.get_last_lr()[0] == lr_at(WSD, 6, [6], 3)
    grown_opt.step()
    grown.step()
    assert grown_opt.param_groups[0]["lr"] == lr_at(WSD, 7, [6], 3)


def test_growth_warning_only_right_after_a_growth_inside_the_decay():
    history = [{"source_step": 3, "move": "text.layers+=1"}, {"source_step": 16, "move": "vision.layers*=2"}]
    warning = growth_warning(WSD, history, 16)
    assert warning.startswith("warning: the growth at step 16 (vision.layers*=2) falls inside the lr decay "
                              "phase (from step 15)")
    assert growth_warning(WSD, history[:1] + [{"source_step": 15}], 15).startswith(
        "warning: the growth at step 15 falls inside")
    assert growth_warning(WSD, history, 17) is None  # not the step the trainer starts from
    assert growth_warning(WSD, history[:1], 3) is None  # before the decay
    assert growth_warning(COSINE, history[:1], 3) is not None  # the cosine decays from the end of its warmup
    assert growth_warning(WSD, [], 16) is None


# ---- real runs -------------------------------------------------------------------------------------------
STEPS, GROWTH, REWARM, LR = 6, 3, 2, 0.002
# wsd over 6 steps, decay_frac 0.5: warmup at positions 0-1, stable at 2, decay from 3 (lr) to 6 (min_lr 0); the
# growth after step 3 falls at the decay start (a warning), its re-warm at positions 3-4 ramps the decaying lr
RUN = [f"train.steps={STEPS}", f"train.lr={LR}", "train.warmup=2", "train.lr_schedule=wsd", "train.decay_frac=0.5",
       f"growth.at_steps=[{GROWTH}]", "growth.moves=[text.layers+=1]", f"growth.rewarm_steps={REWARM}",
       "growth.pim_source=last"]
TRAIN = {"lr": LR, "min_lr": 0.0, "warmup": 2, "steps": STEPS, "lr_schedule": "wsd", "decay_frac": 0.5}
WARNING = "warning: the growth at step 3 (text.layers+=1) falls inside the lr decay phase (from step 3)"


@pytest.fixture(scope="module")
def wsd_runs(tiny_data, tmp_path_factory):
    """An uninterrupted run, and the same run stopped after step 4 (inside the re-warm and the decay), then
    resumed: three launches. Returns the folder and the uninterrupted run's output."""
    base = tmp_path_factory.mktemp("schedule")
    full = launch(base / "full", tiny_data, *RUN)
    launch(base / "stopped", tiny_data, *RUN, "train.stop_after=4")
    launch(base / "stopped", tiny_data, *RUN, resume="latest")
    return base, full.stdout


@pytest.mark.slow
def test_metrics_lr_follows_lr_at_around_the_growth_and_the_growth_warns(wsd_runs):
    """A record's lr is the next update's (position = its step); the growth step's record was written before
    the growth, so it has no re-warm."""
    base, stdout = wsd_runs
    m = metrics(base / "full")
    assert sorted(m) == list(range(1, STEPS + 1))
    for s, r in m.items():
        assert r["lr"] == pytest.approx(lr_at(TRAIN, s, [GROWTH] if s > GROWTH else [], REWARM), rel=1e-9), s
    assert [m[s]["lr"] for s in range(2, 7)] == pytest.approx([LR, LR, LR * 2 / 3 * 2 / 3, LR / 3, 0.0], rel=1e-9)
    assert stdout.count(WARNING) == 1, stdout[-3000:]


@pytest.mark.slow
def test_resume_inside_the_rewarm_and_the_decay_is_exact(wsd_runs):
    base, _ = wsd_runs
    full, stopped = metrics(base / "full"), metrics(base / "stopped")
    assert sorted(stopped) == sorted(full) == list(range(1, STEPS + 1))
    for s in full:
        assert abs(stopped[s]["loss"] - full[s]["loss"]) <= 1e-6, s
        assert stopped[s]["lr"] == full[s]["lr"], s


def first_lr_worker(grown: str, out: str, shards: str, tokenizer: str, *overrides: str) -> None:
    """A trainer (world 1) started from the grown checkpoint: prints the lr the first update will use."""
    from pretrain.config import load_run_config
    from pretrain.trainer import Trainer
    cfg = load_run_config(ROOT / "configs/demo.yaml", [f"data.shards={shards}", f"data.tokenizer={tokenizer}",
                                                       f"train.out_dir={out}", "data.workers=0", *overrides])
    trainer = Trainer(cfg, json.loads((ROOT / "ds_configs/zero2.json").read_text()), resume=grown)
    print(json.dumps({"step": trainer.step, "lr": trainer.engine.get_lr()[0]}), flush=True)


@pytest.mark.slow
def test_the_first_update_after_the_growth_is_rewarmed(wsd_runs, tiny_data):
    """A trainer started from OUT/grown/step3: its optimizer holds lr_at(3, [3]), not the lr saved before the
    growth (DeepSpeed restores the optimizer's param groups after the scheduler)."""
    base, _ = wsd_runs
    grown = base / "full" / "grown" / f"step{GROWTH}" / f"step{GROWTH:08d}"
    code = "import sys; from tests.train.test_schedule import first_lr_worker; first_lr_worker(*sys.argv[1:])"
    proc = subprocess.run([sys.executable, "-c", code, str(grown), str(base / "first_lr"), tiny_data["shards"],
                           tiny_data["tokenizer"], *RUN], cwd=ROOT, env=rank_env(0, 1), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["step"] == GROWTH
    assert result["lr"] == pytest.approx(lr_at(TRAIN, GROWTH, [GROWTH], REWARM), rel=1e-9)
    assert result["lr"] == pytest.approx(LR / 3, rel=1e-9)
    assert WARNING in proc.stdout
