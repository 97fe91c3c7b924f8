"""The growth timeline on a synthetic run folder (fast, no training): the learning-rate series, a search that grew
and one that kept the architecture, each with its share of compute from the search record's summary line, the
search compute on the FLOPs axis, and records written before the summary line existed."""
import json

import pytest

from growth import timeline

STEPS, PER_STEP = 30, 10  # samples per step
GROWN, KEPT = 10, 20  # search steps: the first grows the model, the second keeps it
MOVE = "vision.layers+=2"


def lr(step: int) -> float:
    return 1e-3 * min(1.0, step / 5) * (0.5 if step > KEPT else 1.0)


def write_metrics(run):
    rows = []
    for step in range(1, STEPS + 1):
        grown = step > GROWN
        rows.append({"step": step, "loss": 5.0 - 0.1 * step, "lr": lr(step), "samples": PER_STEP * step,
                     "gflops": 0.02 if grown else 0.01, "params": 2_000_000 if grown else 1_000_000,
                     "data_samples": 100 * (1 + (step > GROWN) + (step > KEPT))})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def row(step, move, role, gflops, winner):
    return {"step": step, "g": 2.0, "data_samples": 200, "move": move, "role": role, "reference": role == "reference",
            "winner": winner, "gflops": gflops, "proxy_batch": 8, "proxy_steps": 2, "heldout_batches": 1}


def write_search(run, step, rows, summary=None):
    lines = rows + [{"step": step, "rejected": True, "move": "text.width*=4", "reason": "over max_gflops"}]
    lines += [summary] if summary else []
    (run / "growth").mkdir(exist_ok=True)
    (run / "growth" / f"search-step{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def summary(step, kept, winner, search_gflop, train_gflop):
    return {"step": step, "summary": True, "kept": kept, "winner": winner, "reference_score": 3.2,
            "winner_score": 3.1 if winner else 3.19, "noise": 0.02, "search_gflop": search_gflop,
            "train_gflop": train_gflop, "share": search_gflop / train_gflop}


@pytest.fixture
def run(tmp_path):
    """30 steps; after step 10 a search grows the model (0.6 GFLOPs, 20% of the 3 GFLOPs trained so far), after
    step 20 one keeps it (0.3 GFLOPs, 1/30 of 9); the rows' own cost estimate differs, so the summary is used."""
    write_metrics(tmp_path)
    write_search(tmp_path, GROWN, [row(GROWN, MOVE, "candidate", 0.02, True), row(GROWN, "", "reference", 0.01, False),
                                   row(GROWN, "", "replicate", 0.01, False)],
                 summary(GROWN, False, MOVE, 0.6, 3.0))
    write_search(tmp_path, KEPT, [row(KEPT, "text.layers+=2", "candidate", 0.03, False),
                                  row(KEPT, "", "reference", 0.02, True), row(KEPT, "", "replicate", 0.02, False)],
                 summary(KEPT, True, None, 0.3, 9.0))
    return tmp_path


def test_searches_read_the_decision_and_the_share_from_the_summary_line(run):
    found = timeline.searches(run)
    assert sorted(found) == [GROWN, KEPT]
    assert found[GROWN]["winner"] == MOVE and not found[GROWN]["kept"]
    assert found[KEPT]["winner"] is None and found[KEPT]["kept"]
    assert [found[s]["gflop"] for s in (GROWN, KEPT)] == [0.6, 0.3]
    assert found[GROWN]["share"] == pytest.approx(0.2) and found[KEPT]["share"] == pytest.approx(1 / 30)


def test_marks_label_the_growth_and_the_kept_search_with_their_share(run):
    marks = timeline.marks(timeline.read_metrics(run), timeline.searches(run), run)
    assert [(m["step"], m["kind"], m["index"]) for m in marks] == [(GROWN, "growth", GROWN), (KEPT, "kept", KEPT)]
    grown, kept = (m["label"] for m in marks)
    assert grown.startswith(f"step {GROWN}: {MOVE} (search, g=2.00)") and "2.00M params" in grown
    assert "search 20.0% of compute" in grown
    assert kept.startswith(f"step {KEPT}: kept: no growth") and "search 3.3% of compute" in kept
    assert [m[1] for m in timeline.growths(timeline.read_metrics(run), timeline.searches(run), run)] == [grown]


def test_curves_hold_the_lr_series_and_count_the_searches_in_the_flops(run):
    rows = timeline.read_metrics(run)
    panels = timeline.curves(rows, timeline.searches(run), run)
    samples, flops = panels["samples"], panels["flops"]
    assert samples["lr"] == [lr(r["step"]) for r in rows] and samples["x"] == [r["samples"] for r in rows]
    trained = 3 * (0.01 * GROWN + 0.02 * (STEPS - GROWN)) * PER_STEP * 1e9
    assert flops["x"][-1] == pytest.approx(trained + 0.9e9)  # the summary's search_gflop, not the rows' estimate
    # each search is a flat stretch: one extra point with the loss and learning rate of the step before it
    assert len(flops["x"]) == len(flops["lr"]) == len(rows) + 2
    at_growth = 3 * 0.01 * GROWN * PER_STEP * 1e9
    at_kept = at_growth + 0.6e9 + 3 * 0.02 * (KEPT - GROWN) * PER_STEP * 1e9
    assert flops["searches"] == [pytest.approx((at_growth, at_growth + 0.6e9, "search 20.0%")),
                                 pytest.approx((at_kept, at_kept + 0.3e9, "search 3.3%"))]
    i = flops["x"].index(at_growth + 0.6e9)
    assert flops["loss"][i] == flops["loss"][i - 1] and flops["lr"][i] == flops["lr"][i - 1] == lr(GROWN)
    for panel, (g, k) in ((samples, (GROWN * PER_STEP, KEPT * PER_STEP)), (flops, (at_growth, at_kept))):
        assert [x for x, _ in panel["growths"]] == pytest.approx([g])
        assert [x for x, _ in panel["kept"]] == pytest.approx([k])
        assert [size for _, _, size in panel["stages"]] == [100, 200, 300]
    assert [lo for lo, _, _ in flops["stages"]] == pytest.approx([0, at_growth, at_kept])  # data came before search


def test_records_without_a_summary_line_still_draw_without_a_share(tmp_path):
    """Written before the summary line: the cost is estimated from the proxy-trained rows, no share is shown; a
    record with only rejected moves (the budget admitted none) is a kept search that cost nothing."""
    rows = write_metrics(tmp_path)
    write_search(tmp_path, GROWN, [row(GROWN, MOVE, "candidate", 0.02, True), row(GROWN, "", "reference", 0.01, False)])
    write_search(tmp_path, KEPT, [])
    found = timeline.searches(tmp_path)
    estimate = (0.02 + 0.01) * 8 * (3 * 2 + 1)
    assert found[GROWN]["gflop"] == pytest.approx(estimate) and found[GROWN]["share"] is None
    assert found[KEPT] == {**found[KEPT], "kept": True, "winner": None, "gflop": 0.0, "share": None}
    marks = timeline.marks(rows, found, tmp_path)
    assert [(m["kind"], m["share"]) for m in marks] == [("growth", None), ("kept", None)]
    assert all("%" not in m["label"] for m in marks) and "kept: no growth" in marks[1]["label"]
    flops = timeline.curves(rows, found, tmp_path)["flops"]
    assert [text for _, _, text in flops["searches"]] == ["search"]  # a search that cost nothing is no stretch
    png = tmp_path / "timeline.png"
    assert timeline.main([str(tmp_path), "--out", str(png)]) == 0 and png.read_bytes()[:4] == b"\x89PNG"


def test_the_cli_draws_the_run(run, capsys):
    assert timeline.main([str(run)]) == 0
    png = run / "timeline.png"
    assert capsys.readouterr().out.strip() == f"timeline: {png}"
    assert png.stat().st_size > 20_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
