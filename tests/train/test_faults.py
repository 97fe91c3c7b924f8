"""Fault injection in CI (issue 13): three kill -9 trials of tests/faults.py on a 2-rank run, one of them inside a
checkpoint save (the GROWCLIP_TEST_PAUSE_IN_SAVE hook); each resumes with --resume latest and ends bit-identical
to the uninterrupted run. The 20-trial run and its result: docs/reliability.md."""
import json

import pytest

from tests import faults

pytestmark = pytest.mark.slow


def test_kill_9_trials_resume_bit_identical(tiny_data, tmp_path):
    rc = faults.main(["--trials", "3", "--in-save", "0.34", "--seed", "0", "--steps", "6", "--save-every", "2",
                      "--work", str(tmp_path), "--shards", tiny_data["shards"], "--tokenizer", tiny_data["tokenizer"]])
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert rc == 0, [faults.describe(r) for r in results]
    assert len(results) == 3 and all(r["killed"] and r["survived"] and r["bit_identical"] and r["log_exact"]
                                     for r in results)
    saves = [r for r in results if r["mode"] == "save"]
    assert len(saves) == 1 and saves[0]["in_save"], saves
    # the kill landed between DeepSpeed's write and the rename: that save's .tmp is left, `latest` is the one before
    r = saves[0]
    assert r["tmp_left"] == [f"step{2 * r['save']:08d}.tmp"], r
    assert r["resumed_from"] == 2 * (r["save"] - 1) and r["latest_after_kill"] != f"step{2 * r['save']:08d}", r


def test_in_save_share_is_spread_evenly():
    assert [faults.in_save(i, 0.34) for i in range(3)] == [False, False, True]
    assert sum(faults.in_save(i, 0.3) for i in range(20)) == 6
