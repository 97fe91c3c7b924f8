"""The search's decision (growth/search.py `decide`): "no growth" is a real candidate, a growth wins only by
more than the measured noise, and every row's compute is counted."""
import math

import pytest

from growth.search import SearchConfig, cost_gflop, decide, noise_of


def row(index, role, move, score, heldout, gflops=1.0):
    return {"index": index, "role": role, "move": move, "score": score, "heldout_loss": sum(heldout) / len(heldout),
            "heldout_losses": heldout, "gflops": gflops, "proxy_batch": 8, "proxy_steps": 2, "heldout_batches": 2}


def rows(best_heldout, reference=(3.0, 3.2), replicate=(3.02, 3.22)):
    """Reference, two candidates (the second one better), replicate; scores are the held-out means."""
    ref = row(0, "reference", "", sum(reference) / 2, list(reference))
    worse = row(1, "candidate", "vision.width*=2", 3.5, [3.5, 3.5], gflops=2.0)
    best = row(2, "candidate", "vision.layers*=2", sum(best_heldout) / 2, list(best_heldout), gflops=1.5)
    rep = row(3, "replicate", "", sum(replicate) / 2, list(replicate))
    return [ref, worse, best, rep]


def test_the_noise_is_the_replicate_spread_and_the_paired_standard_error():
    records = rows([2.9, 3.0])
    ref, _, best, rep = records
    diffs = [-0.1, -0.2]
    se = math.sqrt(sum((d - sum(diffs) / 2) ** 2 for d in diffs) / 1) / math.sqrt(2)
    assert noise_of(best, ref, rep) == pytest.approx(math.sqrt(0.02 ** 2 + se ** 2))


def test_a_growth_that_beats_no_growth_by_more_than_the_noise_wins():
    records = rows([2.6, 2.8])
    d = decide(records, SearchConfig(noise_margin=1.0))
    assert not d["kept"] and d["winner"] == "vision.layers*=2" and d["margin"] == pytest.approx(0.4)
    assert [r["winner"] for r in records] == [False, False, True, False]
    assert [r["place"] for r in records] == [None, 2, 1, None]


def test_no_growth_wins_when_the_best_lead_is_within_the_noise():
    """A lead of 0.005 with a replicate spread of 0.02: the run keeps its architecture (the reference is the
    winner); a stricter margin turns a clear win into "kept" too."""
    records = rows([2.995, 3.195])
    d = decide(records, SearchConfig())
    assert d["kept"] and d["winner"] is None and d["best"] == "vision.layers*=2"
    assert 0 < d["margin"] < d["noise"]
    assert [r["winner"] for r in records] == [True, False, False, False]
    assert decide(rows([2.6, 2.8]), SearchConfig(noise_margin=100.0))["kept"]


def test_no_growth_wins_when_it_ranks_first():
    records = rows([3.3, 3.3])
    d = decide(records, SearchConfig(noise_margin=0.0))
    assert d["kept"] and d["margin"] < 0
    forced = decide(rows([3.3, 3.3]), SearchConfig(always_grow=True))  # the "always grow" ablation
    assert not forced["kept"] and forced["winner"] == "vision.layers*=2"


def test_the_search_compute_counts_every_row():
    records = rows([2.6, 2.8])
    d = decide(records, SearchConfig())
    # gflops x batch x (3 K + H): forward and backward on K proxy batches, forward on H held-out ones
    assert cost_gflop(records[1]) == 2.0 * 8 * (3 * 2 + 2)
    assert d["search_gflop"] == pytest.approx(sum(r["gflops"] for r in records) * 8 * 8)
