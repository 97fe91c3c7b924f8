"""Fault injection inside a growth search in CI (issue 20, item 1): one kill -9 trial of tests/faults.py's `search`
kind. A 2-rank run with two data stages grows by itself at the boundary after step 3 (a tiny search: 2 candidates
and no growth, 2 proxy steps); a random rank is killed while the candidates proxy-train (the `search-train` pause).
`--resume latest` goes on from the save of step 3, searches again, picks the same winner, grows once, and ends on
the uninterrupted run's weights bit for bit with each step logged once. The two kills inside a live growth are in
tests/growth/test_live_growth.py; the 24-trial run over every growth phase and its results: docs/reliability.md."""
import json

import pytest

from tests import faults

pytestmark = pytest.mark.slow


def test_a_kill_inside_the_search_resumes_to_the_same_winner_and_weights(tiny_data, tmp_path):
    rc = faults.main(["--kind", "search", "--only", "0", "--seed", "0", "--pause", "2", "--work", str(tmp_path),
                      "--shards", tiny_data["shards"], "--tokenizer", tiny_data["tokenizer"]])
    [r] = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert rc == 0, faults.describe(r)
    assert r["mode"] == "search-train" and r["killed"] and r["in_phase"], r
    assert r["survived"] and r["bit_identical"] and r["log_exact"], r
    assert r["growth_once"] and r["same_winner"] and r["no_partial"] and r["history"] == [3], r
    # killed before anything of the growth was written: the restart resumes from the save at the boundary, searches
    # and grows again, then goes on from the grown checkpoint; nothing of the killed search is left behind
    assert r["resumed"] == ["checkpoints/step00000003", "grown/step3/step00000003"], r
    assert r["search_redone"] and r["redone"] == 0 and r["left_after_restart"] == [], r
