"""Data-aware automatic growth inside a run (pretrain/growth_loop.py, growth/auto.py, growth/search.py).

One 2-rank ZeRO-1 run with two data stages (4 of the 8 tiny shards, then all 8) and the growing configs' defaults
(wsd schedule with a re-warm, symmetry breaking, stacking, candidates chosen around 4x FLOPs, "no growth" a real
candidate with the noise rule) grows by itself at the stage boundary, to at least 2x the FLOPs per sample: the
search proxy-trains its candidates on both ranks and the winner is grown with PIM m = 1 from the EMA weights;
the search costs at most 5% of the run's training compute. The same search is re-run offline in one process
(`python -m growth.search`), which must rank the
candidates identically, with the same scores, and write the same grown winner. A second run grows its manifest
between two jobs under a budget that admits nothing: the growth is skipped with the reason, training goes on.
"""
import json
import math
import shutil
import time
from pathlib import Path

import pytest
import torch

from growth import search as search_cli
from growth import timeline
from pretrain import checkpoint as ckpt
from pretrain.main import main
from tests.conftest import ROOT, launch, metrics
from tests.growth.helpers import TOL
from tests.growth.runs import first_batches, grown_model, single_process_loss

# A start of width 32 (a model that lacks capacity, as the growing demo's does), 20 steps on the first stage, then
# the search: 3 candidates and no growth, 16 proxy steps of 16 pairs on each of two streams, 16 held-out batches
# (50 GFLOPs); 360 steps of 2 x 64 pairs make that 4.7% of the run's training compute. With a width-64 start
# the tiny data's proxy could not tell a 4x growth from no growth (lead -0.034, noise 0.021): the search kept it.
STEPS, BOUNDARY, MICRO = 360, 20, 64
NARROW = ["model.vision.width=32", "model.text.width=32", "model.embed_dim=32"]
SEARCH = ["growth.mode=auto", "growth.candidates=3", "growth.proxy_steps=16", "growth.proxy_batch=16",
          "growth.heldout_batches=16"]
GROWING = ["train.lr_schedule=wsd", "growth.rewarm_steps=4"]  # what the growing configs set
CLI_SEARCH = ["--candidates", "3", "--proxy-steps", "16", "--proxy-batch", "16", "--heldout-batches", "16"]


def stages(tiny_data) -> list[str]:
    shards = Path(tiny_data["shards"])
    return [f"{shards}/shard-{{000000..000003}}.tar", str(shards)]


@pytest.fixture(scope="module")
def auto_run(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("auto") / "run"
    launch(run, tiny_data, f"train.steps={STEPS}", "train.lr=0.002", "train.warmup=1", 'data.shards=""',
           f"data.stages={json.dumps(stages(tiny_data))}", f"data.stage_steps=[{BOUNDARY}]", *SEARCH, *GROWING,
           *NARROW, "train.save_every=0", f"train.micro_batch={MICRO}", "train.log_every=20",
           ds_config="ds_configs/zero1.json")
    return run


def grown_tag(run):
    return run / "grown" / f"step{BOUNDARY}" / f"step{BOUNDARY:08d}"


def records(path: Path) -> tuple[list[dict], list[dict]]:
    """(proxy-trained rows, rejected moves) of a search record; `decision` gives its summary line."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return ([r for r in rows if not r.get("rejected") and not r.get("summary")],
            [r for r in rows if r.get("rejected")])


def decision(path: Path) -> dict:
    return next(json.loads(line) for line in path.read_text().splitlines() if json.loads(line).get("summary"))


@pytest.mark.slow
def test_the_run_grows_by_itself_at_the_stage_boundary(auto_run):
    m = metrics(auto_run)
    assert sorted(m) == list(range(1, STEPS + 1)) and all(math.isfinite(r["loss"]) for r in m.values())
    assert [m[s]["data_samples"] for s in m] == [1200] * BOUNDARY + [2400] * (STEPS - BOUNDARY)
    assert len({m[s]["params"] for s in range(1, BOUNDARY + 1)}) == 1
    assert m[BOUNDARY + 1]["gflops"] >= 2 * m[BOUNDARY]["gflops"]  # one large move, not a 1.1x nudge
    assert len({m[s]["params"] for s in range(BOUNDARY + 1, STEPS + 1)}) == 1  # once
    trained, _ = records(auto_run / "growth" / f"search-step{BOUNDARY}.jsonl")
    winner = next(r for r in trained if r["winner"])
    assert not winner["reference"]
    summary = decision(auto_run / "growth" / f"search-step{BOUNDARY}.jsonl")
    assert not summary["kept"] and summary["winner"] == winner["move"] and summary["margin"] > summary["noise"]
    assert 0 < summary["share"] <= 0.05, summary  # the search's share of the run's training compute
    entry = ckpt.read_client_state(grown_tag(auto_run))["growth_history"][-1]
    assert (entry["move"], entry["source_step"], entry["data_samples"]) == (winner["move"], BOUNDARY, 2400)
    assert entry["search"]["winner"] == winner["move"] and entry["search"]["g"] == pytest.approx(2.0)
    final = ckpt.read_client_state(auto_run / "checkpoints" / f"step{STEPS:08d}")
    assert final["architecture"] == winner["to"] and final["growth_history"] == [entry]
    assert final["samples"] == STEPS * 2 * MICRO and final["data_samples"] == 2400


@pytest.mark.slow
def test_first_loss_after_the_growth_is_the_grown_models_loss(auto_run):
    """PIM m = 1: the first loss after the growth is the grown checkpoint's loss on the batches the run took,
    which come from the stage-2 shard list with the loader keeping its place."""
    layout = ckpt.read_client_state(grown_tag(auto_run))["layout"]
    batches = first_batches(grown_tag(auto_run), auto_run, dp=2 // layout["tp"])
    grown = single_process_loss(grown_model(grown_tag(auto_run)), batches)
    assert abs(metrics(auto_run)[BOUNDARY + 1]["loss"] - grown) <= TOL


@pytest.mark.slow
def test_the_search_record_holds_every_candidate(auto_run):
    trained, rejected = records(auto_run / "growth" / f"search-step{BOUNDARY}.jsonl")
    assert len(trained) == 4 and sum(r["reference"] for r in trained) == 1  # 3 candidates + no growth
    assert all(r["streams"] == 2 and len(r["heldout_by_stream"]) == 2 for r in trained)
    for r in trained:
        for key in ("move", "gflops", "params", "proxy_loss", "heldout_loss", "score", "seconds", "tp", "pp"):
            assert r[key] is not None, key
    ranked = sorted((r for r in trained if not r["reference"]), key=lambda r: r["score"])
    assert [r["place"] for r in ranked] == [1, 2, 3] and ranked[0]["winner"] and not any(
        r["winner"] for r in ranked[1:])
    assert {r["search_rank"] for r in trained} == {0, 1}  # both ranks proxy-trained candidates
    assert rejected and all(r["reason"] for r in rejected)
    assert list((auto_run / "tb").iterdir())
    assert not (auto_run / "growth" / f"universal-step{BOUNDARY}").exists()  # the conversion is cleaned up


@pytest.mark.slow
def test_the_search_is_identical_in_one_process_and_writes_the_same_winner(auto_run, tiny_data, tmp_path):
    """`python -m growth.search` on the pre-growth save, one process: same ranking, winner and scores (1e-6) as
    the 2-rank search inside the run, and --out writes the grown winner exactly as the run did."""
    record, out = tmp_path / "search.jsonl", tmp_path / "grown"
    rc = search_cli.main(["--from", str(auto_run / "checkpoints" / f"step{BOUNDARY:08d}"), "--data",
                          stages(tiny_data)[1], *CLI_SEARCH, "--record", str(record), "--out", str(out)])
    assert rc == 0
    ours, _ = records(record)
    theirs, _ = records(auto_run / "growth" / f"search-step{BOUNDARY}.jsonl")
    assert [r["move"] for r in ours] == [r["move"] for r in theirs]
    assert [r["winner"] for r in ours] == [r["winner"] for r in theirs]
    for a, b in zip(ours, theirs):
        assert abs(a["score"] - b["score"]) <= 1e-6 and abs(a["heldout_loss"] - b["heldout_loss"]) <= 1e-6
    mine, run = ckpt.full_state_dict(ckpt.resume_dir(out, str(out))), ckpt.full_state_dict(grown_tag(auto_run))
    assert mine.keys() == run.keys() and all(torch.equal(mine[k], run[k]) for k in mine)


@pytest.mark.slow
def test_the_timeline_marks_the_growth_and_the_stages(auto_run, tmp_path):
    png = tmp_path / "timeline.png"
    assert timeline.main([str(auto_run), "--out", str(png)]) == 0
    assert png.stat().st_size > 20_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    panels = timeline.curves(timeline.read_metrics(auto_run), timeline.searches(auto_run))
    winner = ckpt.read_client_state(grown_tag(auto_run))["growth_history"][-1]["move"]
    for panel in panels.values():
        assert len(panel["growths"]) == 1 and winner in panel["growths"][0][1]
        assert [size for _, _, size in panel["stages"]] == [1200, 2400]
    assert len(panels["flops"]["searches"]) == 1 and panels["flops"]["x"][-1] > 0


@pytest.mark.slow
def test_a_corrupt_source_is_refused_naming_the_file_and_the_run_is_untouched(auto_run, tiny_data, tmp_path,
                                                                              capsys):
    from tests.conftest import to_universal
    uni = to_universal(auto_run / "checkpoints" / f"step{BOUNDARY:08d}", tmp_path / "uni")
    victim = uni / "zero" / "visual.proj" / "fp32.pt"
    victim.write_bytes(victim.read_bytes()[:100])
    before = sorted(p.name for p in (auto_run / "checkpoints").iterdir())
    rc = search_cli.main(["--from", str(uni), "--data", stages(tiny_data)[1], *CLI_SEARCH, "--world", "2",
                          "--out", str(tmp_path / "grown")])
    err = capsys.readouterr().err
    assert rc == 2 and str(victim) in err and not (tmp_path / "grown").exists()
    assert sorted(p.name for p in (auto_run / "checkpoints").iterdir()) == before


def test_bad_stages_stop_the_run_naming_the_stage(tmp_path, tiny_data, capsys, monkeypatch):
    """Stages that are empty or drop shards of the stage before stop the entry point with one line naming
    the stage, before any training."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    shards = Path(tiny_data["shards"])
    bad = {
        "dropped": ([f"{shards}/shard-{{000000..000003}}.tar", f"{shards}/shard-{{000001..000007}}.tar"],
                    "shard-000000.tar"),
        "empty": ([str(shards), ""], "data.stages[1] is ''"),
    }
    for name, (spec, named) in bad.items():
        rc = main(["--config", str(ROOT / "configs/demo.yaml"), f"data.tokenizer={tiny_data['tokenizer']}",
                   f"train.out_dir={tmp_path / name}", "train.steps=6", 'data.shards=""',
                   f"data.stages={json.dumps(spec)}", "data.stage_steps=[3]", "growth.mode=auto"])
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert rc == 2 and len(errors) == 1 and "data.stages" in errors[0] and named in errors[0], (name, errors)
        assert not (tmp_path / name).exists()


@pytest.mark.slow
def test_manifest_grown_between_jobs_with_no_affordable_candidate_skips_the_growth(tiny_data, tmp_path):
    """Job 1 trains on a manifest of 4 shards; the manifest then lists all 8; job 2 resumes, finds g = 2 and
    searches, but the budget (forward GFLOPs per sample below any growth) admits nothing: the reason is printed,
    the architecture stays, and training goes on over the grown data."""
    manifest, src = partial_manifest(tiny_data, tmp_path / "data", 4)
    run = tmp_path / "run"
    common = [f"data.shards={manifest}", "train.steps=6", *SEARCH, "growth.max_gflops=0.001"]
    launch(run, tiny_data, *common, "train.stop_after=3", ds_config="ds_configs/zero1.json")
    manifest.write_text(json.dumps(src))
    proc = launch(run, tiny_data, *common, ds_config="ds_configs/zero1.json", resume="latest")
    assert "the budget admits no candidate" in proc.stdout + proc.stderr
    m = metrics(run)
    assert [m[s]["data_samples"] for s in m] == [1200] * 3 + [2400] * 3
    assert len({m[s]["params"] for s in m}) == 1 and not (run / "grown").exists()
    trained, rejected = records(run / "growth" / "search-step3.jsonl")
    assert trained == [] and rejected  # nothing converted or proxy-trained
    assert all("GFLOPs/sample > budget" in r["reason"] for r in rejected)


def partial_manifest(tiny_data, folder: Path, shards: int) -> tuple[Path, dict]:
    """A copy of the tiny shards whose manifest lists the first `shards`; returns it and the full manifest."""
    folder.mkdir()
    full = json.loads((Path(tiny_data["shards"]) / "manifest.json").read_text())
    for entry in full["shards"]:
        shutil.copy(Path(tiny_data["shards"]) / entry["path"], folder / entry["path"])
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({**full, "shards": full["shards"][:shards], "samples": 300 * shards}))
    return manifest, full


@pytest.mark.slow
def test_a_manifest_that_grows_while_the_job_runs_triggers_the_growth(tiny_data, tmp_path):
    """data.refresh_every=1 re-reads the manifest each step; the test adds the other 4 shards once step 2 is
    logged. g = 2 >= growth.data_ratio 1.5, so the trainer stops at the next step, the search runs and the run
    goes on grown, on the new shards, in the same job."""
    manifest, full = partial_manifest(tiny_data, tmp_path / "data", 4)
    run = tmp_path / "run"

    def grow_the_manifest(proc):
        while proc.poll() is None:
            log = run / "metrics.jsonl"
            if log.is_file() and any(json.loads(line)["step"] >= 2 for line in log.read_text().splitlines()):
                tmp = manifest.with_name("manifest.json.tmp")
                tmp.write_text(json.dumps(full))
                tmp.replace(manifest)
                return
            time.sleep(0.02)

    launch(run, tiny_data, f"data.shards={manifest}", "train.steps=30", "data.refresh_every=1",
           "growth.data_ratio=1.5", "growth.always_grow=true", *SEARCH, ds_config="ds_configs/zero1.json",
           while_running=grow_the_manifest)
    m = metrics(run)
    grown_at = [s for s in m if m[s]["data_samples"] == 2400]
    assert grown_at and sorted(m) == list(range(1, 31)), "the manifest grew after the run ended"
    step = grown_at[0] - 1
    assert [m[s]["data_samples"] for s in m] == [1200] * step + [2400] * (30 - step)
    assert m[step + 1]["params"] > m[step]["params"]  # grown right where the data grew
    history = ckpt.read_client_state(run / "checkpoints" / "step00000030")["growth_history"]
    assert [(h["source_step"], h["data_samples"], h["search"]["g"]) for h in history] == [(step, 2400, 2.0)]
    assert (run / "growth" / f"search-step{step}.jsonl").is_file()


@pytest.mark.slow
def test_a_search_that_ranks_no_growth_first_keeps_the_architecture_and_trains_on(tiny_data, tmp_path):
    """A compute price so high (growth.penalty=10 per doubling of FLOPs) that the proxy ranks the unchanged model
    first: the run logs "no growth" with the scores, keeps its architecture, lets the new stage in and trains on;
    the record's summary says kept, and nothing is grown."""
    run = tmp_path / "run"
    proc = launch(run, tiny_data, "train.steps=6", "train.warmup=1", 'data.shards=""',
                  f"data.stages={json.dumps(stages(tiny_data))}", "data.stage_steps=[3]", *SEARCH, *GROWING,
                  "growth.penalty=10", ds_config="ds_configs/zero1.json")
    out = proc.stdout + proc.stderr
    assert "no growth: the best candidate" in out and "for the unchanged model" in out
    m = metrics(run)
    assert sorted(m) == list(range(1, 7)) and len({m[s]["params"] for s in m}) == 1
    assert [m[s]["data_samples"] for s in m] == [1200] * 3 + [2400] * 3
    trained, _ = records(run / "growth" / "search-step3.jsonl")
    reference = next(r for r in trained if r["reference"])
    assert reference["winner"] and reference["score"] < min(r["score"] for r in trained if not r["reference"])
    summary = decision(run / "growth" / "search-step3.jsonl")
    assert summary["kept"] and summary["winner"] is None and summary["margin"] < 0
    assert not (run / "grown").exists()
    final = ckpt.read_client_state(run / "checkpoints" / "step00000006")
    assert final["growth_history"] == [] and final["data_samples"] == 2400
