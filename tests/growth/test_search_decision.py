"""The search's decision (growth/search.py `decide`): "no growth" is a real candidate, a growth wins only by
more than the noise measured from two proxy streams, and every row's compute is counted."""
import math
import statistics

import pytest

from growth.search import SearchConfig, cost_gflop, decide, noise_of


def row(index, move, by_stream, per_batch, gflops=1.0):
    """A proxy-trained row: its held-out loss on each of two proxy streams and per held-out batch."""
    return {"index": index, "move": move, "reference": index == 0, "score": sum(by_stream) / 2,
            "heldout_loss": sum(by_stream) / 2, "heldout_by_stream": list(by_stream), "heldout_losses": per_batch,
            "gflops": gflops, "proxy_batch": 8, "proxy_steps": 2, "heldout_batches": 2, "streams": 2}


def rows(best_by_stream, best_per_batch):
    """No growth (3.0, 3.1 on its streams), a worse candidate, and the candidate under test."""
    return [row(0, "", (3.0, 3.1), [3.0, 3.1]),
            row(1, "vision.width*=2", (3.5, 3.5), [3.5, 3.5], gflops=2.0),
            row(2, "vision.layers*=2", best_by_stream, best_per_batch, gflops=1.5)]


def test_the_noise_is_the_spread_over_streams_and_the_paired_standard_error():
    ref, _, best = rows((2.8, 3.0), [2.85, 2.95])
    by_stream = [-0.2, -0.1]
    per_batch = [-0.15, -0.15]
    expected = math.hypot(statistics.stdev(by_stream) / math.sqrt(2), statistics.stdev(per_batch) / math.sqrt(2))
    assert noise_of(best, ref) == pytest.approx(expected)


def test_a_growth_that_beats_no_growth_by_more_than_the_noise_wins():
    records = rows((2.6, 2.7), [2.6, 2.7])
    d = decide(records, SearchConfig(noise_margin=1.0))
    assert not d["kept"] and d["winner"] == "vision.layers*=2" and d["margin"] == pytest.approx(0.4)
    assert d["noise"] < d["margin"]
    assert [r["winner"] for r in records] == [False, False, True]
    assert [r["place"] for r in records] == [None, 2, 1]


def test_no_growth_wins_when_the_best_lead_is_within_the_noise():
    """A lead of 0.01 whose sign flips between the two proxy streams: the run keeps its architecture (the
    reference is the winner); a stricter margin turns a clear win into "kept" too."""
    records = rows((2.9, 3.18), [3.04, 3.04])
    d = decide(records, SearchConfig())
    assert d["kept"] and d["winner"] is None and d["best"] == "vision.layers*=2"
    assert 0 < d["margin"] < d["noise"]
    assert [r["winner"] for r in records] == [True, False, False]
    assert decide(rows((2.6, 2.8), [2.65, 2.75]), SearchConfig(noise_margin=100.0))["kept"]


def test_no_growth_wins_when_it_ranks_first_unless_growth_is_forced():
    d = decide(rows((3.3, 3.3), [3.3, 3.3]), SearchConfig(noise_margin=0.0))
    assert d["kept"] and d["margin"] < 0
    forced = decide(rows((3.3, 3.3), [3.3, 3.3]), SearchConfig(always_grow=True))  # the "always grow" ablation
    assert not forced["kept"] and forced["winner"] == "vision.layers*=2"


def test_the_search_compute_counts_every_row_and_both_streams():
    records = rows((2.6, 2.7), [2.6, 2.7])
    d = decide(records, SearchConfig())
    # per stream: gflops x batch x (3 K + H), forward and backward on K proxy batches, forward on H held-out ones
    assert cost_gflop(records[1]) == 2 * 2.0 * 8 * (3 * 2 + 2)
    assert d["search_gflop"] == pytest.approx(2 * sum(r["gflops"] for r in records) * 8 * 8)


def test_a_five_percent_data_increase_does_not_trigger_a_search_by_default():
    """growth.data_ratio defaults to 1.5: the demo's OpenClipArt arrival (110,000 -> 115,121 pairs, +4.7%) is
    no reason to search, MNIST's (60,000 -> 110,000) is."""
    from types import SimpleNamespace

    from pretrain.config import GrowthConfig
    from pretrain.growth_loop import GrowingRun
    run = SimpleNamespace(reference=110_000, cfg=SimpleNamespace(growth=GrowthConfig()))
    assert GrowthConfig().data_ratio == 1.5
    assert not GrowingRun._growth_due(run, 115_121)
    run.reference = 60_000
    assert GrowingRun._growth_due(run, 110_000)
