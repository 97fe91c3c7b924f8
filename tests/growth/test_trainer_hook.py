"""The trainer's growth hook (pretrain/growth_loop.py): one 2-rank ZeRO-1 run that grows in-process twice,
vision heads 2 -> 4 at step 2 (attention inner dim 64 -> 128 at width 64) while moving from (tp, dp) = (1, 2) to
(2, 1), then text depth at step 4 back to (1, 2);
how a resume picks the growths left and its layout; growth config errors that stop the entry point before any
training (in-process: main returns before DeepSpeed starts)."""
import math

import pytest

from pretrain import checkpoint as ckpt
from pretrain.arch import Architecture
from pretrain.checkpoint import read_client_state
from pretrain.config import load_run_config
from pretrain.growth_loop import grown_after_crash, resume_plan
from pretrain.main import main
from pretrain.model import CLIP
from pretrain.schedule import lr_at
from pretrain.trainer import batch_fingerprint
from tests.conftest import ROOT, launch, metrics
from tests.growth.helpers import TOL
from tests.growth.runs import first_batches, grown_model, single_process_loss

STEPS, LR = 7, 0.002
GROWTHS = {2: ("vision.heads*=2", 2), 4: ("text.layers+=1", 1)}  # step -> (move, tp after it)


@pytest.fixture(scope="module")
def growing_run(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("growing") / "run"
    moves = ",".join(move for move, _ in GROWTHS.values())
    launch(run, tiny_data, f"train.steps={STEPS}", f"train.lr={LR}", "train.warmup=1",
           f"growth.at_steps=[{','.join(map(str, GROWTHS))}]", f"growth.moves=[{moves}]",
           f"growth.tp=[{','.join(str(tp) for _, tp in GROWTHS.values())}]", "growth.pim_source=last",
           "train.fingerprints=true",  # the per-step "batches" that the data-order checks read
           "train.save_every=2",  # the step-2 growth is live (no save of its own): the source save the tests read
           ds_config="ds_configs/zero1.json")
    return run


def grown_tag(run, step):
    return run / "grown" / f"step{step}" / f"step{step:08d}"


@pytest.mark.slow
def test_metrics_are_one_record_across_growths(growing_run):
    lines = (growing_run / "metrics.jsonl").read_text().splitlines()
    m = metrics(growing_run)
    assert len(lines) == STEPS and sorted(m) == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["loss"]) for r in m.values())
    # two ranks read two batches at dp = 2, one at tp = 2 (dp = 1): the layout changed at each growth
    assert [len({tuple(b) for b in m[s]["batches"]}) for s in m] == [2, 2, 1, 1, 2, 2, 2]
    assert m[STEPS]["loss"] < m[1]["loss"]  # same global batch size (32) at both ends
    cosine = {"lr": LR, "warmup": 1, "steps": STEPS, "min_lr": 0.0, "lr_schedule": "cosine"}  # no re-warm set
    assert [r["lr"] for r in m.values()] == pytest.approx([lr_at(cosine, s) for s in m], abs=1e-12)


@pytest.mark.slow
def test_grown_checkpoints_carry_the_architecture_and_history(growing_run):
    history = []
    for step, (move, tp) in GROWTHS.items():
        client = ckpt.read_client_state(grown_tag(growing_run, step))
        entry = client["growth_history"][-1]
        assert (entry["move"], entry["source_step"], entry["layout"]) == (move, step, {"tp": tp, "pp": 1})
        assert entry["pim"]["source"] == "last"
        history.append(entry)
        assert client["growth_history"] == history, "the trainer dropped the history of an earlier growth"
    arch = Architecture.from_dict(ckpt.read_client_state(grown_tag(growing_run, 4))["architecture"])
    assert (arch.vision.heads, arch.vision.width, arch.vision.attn_width, arch.text.layers) == (4, 64, 128, 3)
    final = ckpt.read_client_state(growing_run / "checkpoints" / f"step{STEPS:08d}")
    assert ckpt.resolve(growing_run) == (growing_run / "checkpoints", f"step{STEPS:08d}")
    assert final["architecture"] == arch.to_dict() and final["growth_history"] == history
    assert final["step"] == STEPS and final["layout"] == {"tp": 1, "pp": 1, "dp": 2}


@pytest.mark.slow
@pytest.mark.parametrize("step", list(GROWTHS))
def test_first_loss_after_growth_is_the_grown_and_the_source_models_loss(growing_run, step):
    """With PIM m = 1 from the last weights the growth preserves the function: the run's first loss after the
    growth is the grown checkpoint's loss on the batches the run took, and the saved source model's too."""
    tp = GROWTHS[step][1]
    batches = first_batches(grown_tag(growing_run, step), growing_run, dp=2 // tp)
    record = metrics(growing_run)[step + 1]
    assert record["batches"] == [[batch_fingerprint(*batches[rank // tp])] for rank in range(2)]
    grown = single_process_loss(grown_model(grown_tag(growing_run, step)), batches)
    assert abs(record["loss"] - grown) <= TOL
    source_tag = growing_run / "checkpoints" / f"step{step:08d}"
    source = CLIP(Architecture.from_dict(ckpt.read_client_state(source_tag)["architecture"]))
    source.load_state_dict(ckpt.full_state_dict(source_tag))
    assert abs(single_process_loss(source.eval(), batches) - grown) <= TOL


def test_resume_plan_skips_the_growths_taken_and_starts_at_their_layout(tmp_path):
    tokenizer = tmp_path / "tokenizer.model"
    tokenizer.write_bytes(b"only checked to exist")
    moves = "[vision.layers+=1,text.layers+=1,vision.layers+=1]"
    cfg = load_run_config(ROOT / "configs/demo.yaml", [f"data.tokenizer={tokenizer}", "train.steps=10",
                                                       "growth.at_steps=[2,4,6]", f"growth.moves={moves}",
                                                       "growth.tp=[2,1,2]"])
    plan = {taken: resume_plan(cfg, {"growth_history": [{"source_step": s} for s in taken]})
            for taken in ((), (2,), (2, 4), (3,))}
    assert {t: ([g.step for g in pending], layout) for t, (pending, layout) in plan.items()} == {
        (): ([2, 4, 6], (1, 1)), (2,): ([4, 6], (2, 1)), (2, 4): ([6], (1, 1)), (3,): ([2, 4, 6], (1, 1))}
    assert [(g.tp, g.pp) for g in plan[()][0]] == [(2, 1), (1, 1), (2, 1)]


BAD = [  # overrides -> what the one error line names
    (["growth.at_steps=[4,2]", "growth.moves=[vision.layers+=1,text.layers+=1]"], "growth.at_steps [4, 2] must be"),
    (["growth.at_steps=[2]", "growth.moves=[vision.layers+=1,text.layers+=1]"], "growth.moves has 2 entries"),
    (["growth.at_steps=[5]", "growth.moves=[vision.layers+=1]"], "growth.at_steps [5] must lie in 1..train.steps-1"),
    (["growth.at_steps=[2]", "growth.moves=[vision.layerz+=1]"], "growth.moves[0]: move 'vision.layerz+=1'"),
    (["growth.at_steps=[2]", "growth.moves=[vision.layers+=1]", "growth.tp=[1,2]"], "growth.tp has 2 entries"),
    (["growth.at_steps=[2]", "growth.moves=[vision.layers+=1]", "growth.pim_m=0"], "growth.pim_m must be"),
    (["growth.at_steps=[2]", "growth.moves=[vision.layers=1]"], "growth.moves[0] ('vision.layers=1' at step 2"),
    (["growth.at_steps=[2]", "growth.moves=[vision.layers+=1]", "growth.tp=[3]"], "growth.tp/growth.pp[0]"),
    (["growth.at_steps=[2]", "growth.moves=[vision.layers+=1]", "ds.zero_optimization.stage=3"],
     "growth.at_steps: growth reads the model-states file of a ZeRO 0-2 save"),
    (["growth.at_steps=[2]", "growth.moves=[vision.head_dim*=8]", "train.kernels=triton"],
     "growth.moves[0] ('vision.head_dim*=8' at step 2, tp=1, pp=1): model vision.head_dim is 256"),
]
BAD_IDS = ["unsorted_steps", "moves_count", "step_past_end", "bad_move", "tp_count", "pim_m", "shrinking_move",
           "tp_vs_world", "zero3", "kernel_head_dim"]


@pytest.mark.parametrize("overrides, named", BAD, ids=BAD_IDS)
def test_bad_growth_config_stops_before_training(overrides, named, tmp_path, capsys, monkeypatch):
    """main exits with status 2 and one line naming the key. The last four need the starting architecture, the
    world size (2 here), the DeepSpeed config or the kernels: a shrinking move, a tp that does not divide the
    world, ZeRO-3, a head_dim past the Triton kernel's 128."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    tokenizer = tmp_path / "tokenizer.model"
    tokenizer.write_bytes(b"only checked to exist")
    rc = main(["--config", str(ROOT / "configs/demo.yaml"), f"data.tokenizer={tokenizer}",
               f"train.out_dir={tmp_path / 'run'}", "train.steps=5", *overrides])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and named in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_stop_between_growth_and_save_resumes_from_the_grown_checkpoint(growing_run):
    """The step-4 save is the pre-growth one; OUT/grown/step4 was written from it, so a run resumed there goes
    on from the grown checkpoint by itself. Once the growth is in the history, nothing is redirected."""
    client = read_client_state(growing_run / "checkpoints" / "step00000004")
    assert grown_after_crash(growing_run, client) == grown_tag(growing_run, 4)
    grown = read_client_state(grown_tag(growing_run, 4))
    assert grown_after_crash(growing_run, grown) is None


@pytest.mark.slow
@pytest.mark.parametrize("growth, named", [
    (["growth.at_steps=[3]", "growth.moves=[text.layers+=1]"],
     "growth.at_steps[0]=3: the run resumes at step 4, past this growth step"),
], ids=["resumed_past_growth_step"])
def test_resume_checks_read_the_checkpoints_growth_history(growing_run, tiny_data, growth, named, capsys,
                                                           monkeypatch):
    """Resuming the growing run from its step-4 save (pre-growth; its history holds the step-2 growth)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    before = (growing_run / "metrics.jsonl").read_text()
    source = growing_run / "checkpoints" / "step00000004"
    rc = main(["--config", str(ROOT / "configs/demo.yaml"), "--resume", str(source),
               f"data.tokenizer={tiny_data['tokenizer']}", f"train.out_dir={growing_run}", f"train.steps={STEPS}",
               *growth])
    err = capsys.readouterr().err
    assert rc == 2 and named.format(run=growing_run) in err, err
    assert (growing_run / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_the_timeline_labels_written_growths_with_their_moves(growing_run):
    from growth import timeline
    rows = timeline.read_metrics(growing_run)
    labels = [text for _, text in timeline.growths(rows, timeline.searches(growing_run), growing_run)]
    assert len(labels) == len(GROWTHS) and all(move in text for (move, _), text in zip(GROWTHS.values(), labels))
