"""Data that grows: TrainLoader.add_shards and resume across an addition."""
import logging
import os
from collections import Counter

import pytest
import torch

from pretrain.data.pipeline import TrainLoader

from .helpers import good_sample, write_tar

OLD = set(range(60))  # synthetic_shards: 4 shards x 15 samples, ids 0..59
BUFFER = 10


def ids(tokenizer, texts: torch.Tensor) -> list[int]:
    """Sample index from the caption "picture number i"."""
    return [int(tokenizer.decode(row.tolist()).rsplit(" ", 1)[1]) for row in texts]


def new_shards(directory, n: int, per_shard: int = 10, base: int = 100) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    return [write_tar(directory / f"shard-{s:06d}.tar", [good_sample(base + s * per_shard + i)
                                                          for i in range(per_shard)]) for s in range(n)]


@pytest.fixture(scope="module")
def added(tmp_path_factory):
    """Three new shards of 10 samples, ids 100..129."""
    return new_shards(tmp_path_factory.mktemp("added"), 3)


def make(shards, tokenizer, rank=0, dp=1, workers=0, order="sharded", batch=3, seed=0):
    return TrainLoader(shards, tokenizer, 8, batch, rank, dp, workers=workers, seed=seed, shuffle_buffer=BUFFER,
                       order=order)


def batches_equal(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


# ---- one epoch across an addition, and the next --------------------------------------------------------------

def epochs_of_rows(loader, rank: int, rows: int) -> list[int]:
    """The epoch of each of this rank's rows in the batch just consumed: the position (e, c) after it means
    the stream batch's last c rows are epoch e and the ones before epoch e-1 (no skips; epochs > a batch)."""
    position = loader._positions[(loader._next_worker - 1) % loader.workers_per_rank]
    stream_batch = loader.stream_batch
    first = rank * rows if loader.order == "global" else 0
    return [position["epoch"] - (first + i < stream_batch - position["consumed"]) for i in range(rows)]


@pytest.mark.parametrize("when, n_new", [("early", 3), ("late", 1), ("end", 3)])
@pytest.mark.parametrize("dp", [1, 2])
@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("order", ["sharded", "global"])
def test_epoch_across_an_addition_and_the_next_see_every_sample_once(synthetic_shards, added, tokenizer, order,
                                                                     workers, dp, when, n_new):
    """Shards added early in epoch 0, inside every stream's last shuffle-buffer-full of it, or exactly at its
    end (1 new shard: fewer than the streams when there are several). Over all ranks and workers, epoch 0 and
    epoch 1 each hold every old and new sample exactly once, and the new ones come only after the addition
    (mixed into the rest of epoch 0)."""
    grown = synthetic_shards + added[:n_new]
    new_ids = set(range(100, 100 + 10 * n_new))
    loaders = [make(synthetic_shards, tokenizer, r, dp, workers, order) for r in range(dp)]
    its = [iter(ld) for ld in loaders]
    streams = loaders[0].streams
    per_stream = 60 // streams

    def due() -> bool:
        consumed = [p["consumed"] for ld in loaders for p in ld._positions]
        assert all(p["epoch"] == 0 for ld in loaders for p in ld._positions)
        if when == "early":
            return max(consumed) > 0
        if when == "late":
            return min(consumed) > per_stream - BUFFER and max(consumed) < per_stream
        return min(consumed) == per_stream

    seen: dict[int, Counter] = {0: Counter(), 1: Counter()}
    before: list[int] = []
    grew = False
    while min(p["epoch"] for ld in loaders for p in ld._positions) < 2:
        for rank, (ld, it) in enumerate(zip(loaders, its)):
            _, texts = next(it)
            for i, epoch in zip(ids(tokenizer, texts), epochs_of_rows(ld, rank, len(texts))):
                if epoch in seen:
                    seen[epoch][i] += 1
                if not grew:
                    before.append(i)
        if not grew and due():
            for ld in loaders:
                assert ld.add_shards(grown) == added[:n_new]
            grew = True
    assert grew and not set(before) & new_ids
    assert seen[0] == Counter(OLD | new_ids), "epoch 0 (with the addition)"
    assert seen[1] == Counter(OLD | new_ids), "epoch 1"
    assert all(p["phases"] == [len(grown)] for ld in loaders for p in ld._positions)


@pytest.mark.parametrize("order, workers, dp", [("sharded", 2, 1), ("sharded", 0, 2), ("global", 2, 2)])
def test_streams_in_different_epochs_agree_on_when_new_shards_join(synthetic_shards, added, tokenizer, order,
                                                                   workers, dp):
    """3 old shards over 2 streams: one stream's epoch is twice the other's, so at the addition one stream is in
    epoch 1 and the other still in epoch 0. The new shards join at the end of epoch 1 for both, so epoch 0 is
    the old samples once and epochs 1 and 2 all samples once. A state saved before the addition, loaded with
    every rank's entry onto the grown list, gives the same batches."""
    old, grown = synthetic_shards[:3], synthetic_shards[:3] + added
    loaders = [make(old, tokenizer, r, dp, workers, order) for r in range(dp)]
    its = [iter(ld) for ld in loaders]
    seen: dict[int, Counter] = {0: Counter(), 1: Counter(), 2: Counter()}
    after: list[list] = [[] for _ in loaders]
    saved = None
    while min(p["epoch"] for ld in loaders for p in ld._positions) < 3:
        for rank, (ld, it) in enumerate(zip(loaders, its)):
            batch = next(it)
            if saved is not None and len(after[rank]) < 20:
                after[rank].append(batch)
            for i, epoch in zip(ids(tokenizer, batch[1]), epochs_of_rows(ld, rank, len(batch[1]))):
                if epoch in seen:
                    seen[epoch][i] += 1
        epochs = {p["epoch"] for ld in loaders for p in ld._positions}
        if saved is None and epochs == {0, 1}:
            saved = [ld.state_dict() for ld in loaders]
            for ld in loaders:
                ld.add_shards(grown, epoch=max(x.epoch for x in loaders))
            assert all(p["phases"] == [3, 6] if p["epoch"] == 1 else p["later"] == [[1, 6]]
                       for ld in loaders for p in ld._positions)
    assert saved is not None
    assert seen[0] == Counter(set(range(45))), "epoch 0: before the addition"
    assert seen[1] == seen[2] == Counter(set(range(45)) | set(range(100, 130))), "epochs 1 and 2"
    for rank in range(dp):
        resumed = make(grown, tokenizer, rank, dp, workers, order)
        resumed.load_state_dict(saved)
        it = iter(resumed)
        assert batches_equal([next(it) for _ in range(20)], after[rank])


# ---- exact resume --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("order, workers, dp, rank", [("sharded", 0, 1, 0), ("sharded", 2, 2, 1),
                                                      ("global", 1, 2, 0), ("global", 2, 1, 0)])
def test_state_after_an_addition_resumes_exactly(synthetic_shards, added, tokenizer, order, workers, dp, rank,
                                                 tmp_path):
    grown = synthetic_shards + added
    live = make(synthetic_shards, tokenizer, rank, dp, workers, order)
    it = iter(live)
    for _ in range(5):
        next(it)
    live.add_shards(grown)
    for _ in range(3):
        next(it)
    torch.save(live.state_dict(), tmp_path / "state.pt")
    expected = [next(it) for _ in range(30)]  # past the end of epoch 0 and into epoch 1
    assert max(p["epoch"] for p in live._positions) >= 1
    # the new loader's list is in another order: the state's order wins
    fresh = make(added[::-1] + synthetic_shards[::-1], tokenizer, rank, dp, workers, order)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    got_it = iter(fresh)
    assert batches_equal([next(got_it) for _ in range(30)], expected)


@pytest.mark.parametrize("order, workers, dp, rank", [("sharded", 0, 1, 0), ("sharded", 1, 2, 1),
                                                      ("global", 2, 2, 1), ("sharded", 2, 1, 0)])
@pytest.mark.parametrize("taken", [3, 11])
def test_state_before_an_addition_on_the_grown_list_is_the_live_addition(synthetic_shards, added, tokenizer, order,
                                                                         workers, dp, rank, taken, caplog):
    """What a run resumed on the next data stage sees: the same batches as add_shards at the saved position
    (the live iterator, held across the addition, drops what its workers prefetched)."""
    grown = synthetic_shards + added
    live = make(synthetic_shards, tokenizer, rank, dp, workers, order)
    it = iter(live)
    for _ in range(taken):
        next(it)
    before = live.state_dict()
    live.add_shards(grown)
    expected = [next(it) for _ in range(25)]
    resumed = make(grown, tokenizer, rank, dp, workers, order)
    with caplog.at_level(logging.WARNING, logger="pretrain.data.pipeline"):
        resumed.load_state_dict([before] if order == "sharded" else [before, before])
    assert "cannot resume" not in caplog.text
    resumed_it = iter(resumed)
    assert batches_equal([next(resumed_it) for _ in range(25)], expected)
    assert resumed.state_dict() == live.state_dict()
    # and not what a loader that knew all shards from the start gives
    plain = iter(make(grown, tokenizer, rank, dp, workers, order))
    assert not batches_equal([next(plain) for _ in range(25)], expected)


def test_no_op_addition_keeps_the_batches(synthetic_shards, tokenizer):
    reference = iter(make(synthetic_shards, tokenizer, workers=2))
    expected = [next(reference) for _ in range(8)]
    loader = make(synthetic_shards, tokenizer, workers=2)
    it = iter(loader)
    got = [next(it) for _ in range(3)]
    assert loader.add_shards([os.path.abspath(p) for p in reversed(synthetic_shards)]) == []
    assert loader.shards == synthetic_shards
    assert all(p["phases"] == [4] and p["later"] == [] for p in loader.state_dict()["positions"])
    got += [next(it) for _ in range(5)]
    assert batches_equal(got, expected)


def test_other_layout_changes_still_restart_at_the_next_epoch(synthetic_shards, added, tokenizer, caplog):
    loader = make(synthetic_shards, tokenizer)
    it = iter(loader)
    for _ in range(25):  # into epoch 1
        next(it)
    state = loader.state_dict()
    for other in (make(synthetic_shards + added, tokenizer, seed=1),      # grown, but another seed
                  make(synthetic_shards[1:] + added, tokenizer),          # a shard dropped
                  make(synthetic_shards + added, tokenizer, workers=2)):  # grown, but other workers
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pretrain.data.pipeline"):
            other.load_state_dict(state)
        assert "cannot resume exactly" in caplog.text
        assert all(p == {"epoch": 2, "consumed": 0, "skipped": {}, "phases": [len(other.shards)], "joins": [],
                        "later": []}
                   for p in other.state_dict()["positions"])


def test_version_1_states_still_load(synthetic_shards, added, tokenizer, caplog):
    import hashlib
    from pathlib import Path

    def v1(state, shards):
        names = "\n".join("/".join(Path(p).parts[-2:]) for p in shards).encode()
        layout = {k: v for k, v in state["layout"].items() if k != "shards"}
        layout.update(shards_sha256=hashlib.sha256(names).hexdigest(), num_shards=len(shards))
        positions = [{k: v for k, v in p.items() if k != "phases"} for p in state["positions"]]
        return {"version": 1, "dp_rank": 0, "layout": layout, "next_worker": state["next_worker"],
                "positions": positions}

    reference = iter(make(synthetic_shards, tokenizer, workers=2))
    expected = [next(reference) for _ in range(12)]
    loader = make(synthetic_shards, tokenizer, workers=2)
    it = iter(loader)
    got = [next(it) for _ in range(7)]
    state = v1(loader.state_dict(), synthetic_shards)
    same = make(synthetic_shards, tokenizer, workers=2)
    same.load_state_dict(state)  # same shards: exact, as before
    resumed = iter(same)
    assert batches_equal(got + [next(resumed) for _ in range(5)], expected)
    grown = make(synthetic_shards + added, tokenizer, workers=2)
    with caplog.at_level(logging.WARNING, logger="pretrain.data.pipeline"):
        grown.load_state_dict([state])  # no names: cannot tell the old shards, so the old fallback
    assert "cannot resume exactly" in caplog.text and grown._positions[0]["epoch"] == 1


def test_add_shards_needs_every_current_shard(synthetic_shards, added, tokenizer):
    loader = make(synthetic_shards, tokenizer)
    with pytest.raises(ValueError, match=f"lacks the current shard {synthetic_shards[2]}"):
        loader.add_shards(synthetic_shards[:2] + synthetic_shards[3:] + added)
    assert loader.shards == synthetic_shards  # unchanged


# ---- the new shards are mixed into the rest of the epoch -----------------------------------------------------
# 8 old shards x 40 (ids 0..319) and 4 new ones x 40 (ids 1000..1159): big enough for shares to mean something.

BIG_OLD, BIG_NEW = set(range(320)), set(range(1000, 1160))


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    return new_shards(root / "old", 8, 40, base=0), new_shards(root / "new", 4, 40, base=1000)


class Run:
    """Loaders of all DP ranks consumed in lockstep, recording each stream's rows as (id, epoch) in stream
    order (global order: the ranks' rows in rank order are the stream's batch)."""

    def __init__(self, shards, tokenizer, dp=1, workers=0, order="sharded", batch=8):
        self.loaders = [make(shards, tokenizer, r, dp, workers, order, batch) for r in range(dp)]
        self.its = [iter(ld) for ld in self.loaders]
        self.rows: dict[tuple, list[tuple[int, int]]] = {}
        self.log: list[tuple[int, int]] = []  # every row in the order consumed

    def step(self) -> list:
        """One batch from every rank; returns them."""
        batches = []
        for rank, (ld, it) in enumerate(zip(self.loaders, self.its)):
            batches.append(next(it))
            texts = batches[-1][1]
            worker = (ld._next_worker - 1) % ld.workers_per_rank
            key = (worker,) if ld.order == "global" else (rank, worker)
            rows = list(zip(ids(ld.tokenizer, texts), epochs_of_rows(ld, rank, len(texts))))
            self.rows.setdefault(key, []).extend(rows)
            self.log.extend(rows)
        return batches

    def positions(self):
        return [p for ld in self.loaders for p in ld._positions]

    def add(self, shards):
        epoch = max(ld.epoch for ld in self.loaders)
        for ld in self.loaders:
            ld.add_shards(shards, epoch=epoch)

    def until(self, done):
        while not done():
            self.step()

    def epoch(self, e: int) -> Counter:
        return Counter(i for rows in self.rows.values() for i, epoch in rows if epoch == e)


LAYOUTS = [("sharded", 0, 1), ("sharded", 2, 1), ("sharded", 1, 2), ("global", 2, 2)]


@pytest.mark.parametrize("order, workers, dp", LAYOUTS)
def test_new_samples_are_mixed_in_from_the_addition(big, tokenizer, order, workers, dp):
    """Added after a quarter of epoch 0, the new shards show up at once: among the first 100 rows after the
    addition their share is p = new / (new + old left) = 160 / 400 = 0.4 (from the recorded joins) within 0.15.
    The interleave is a uniformly random merge (the coin's odds follow the counts left), so per stream that share
    is hypergeometric; summed over the streams its standard deviation is about 0.043 (100 x 0.4 x 0.6 x 300/399
    items squared), and 0.15 is 3.5 of them (seed 0 gives 0.35, 0.44, 0.41 and 0.47, p = 0.42 for the last
    layout; appending the new shards after the old ones would give 0). With right counts both sides run out
    together: each stream's last 10% of the epoch after the addition (19 items or more) holds old and new
    samples (one side only has probability at most 0.6^19 < 1e-4). Epochs 0 and 1 hold every sample once."""
    old, new = big
    run = Run(old, tokenizer, dp, workers, order)
    streams = run.loaders[0].streams
    run.until(lambda: min(p["consumed"] for p in run.positions()) >= 320 // streams // 4)
    at = {key: len(rows) for key, rows in run.rows.items()}
    before = len(run.log)
    run.add(old + new)
    joins = [p["joins"] for p in run.positions()]
    assert all(len(j) == 1 for j in joins)
    if order == "global":
        joins = joins[: len(joins) // dp]  # every rank holds the same streams
    n_new, n_old = sum(j[0][2] for j in joins), sum(j[0][1] for j in joins)
    assert n_new == 160 and n_old + sum(j[0][0] for j in joins) == 320
    p = n_new / (n_new + n_old)
    assert 0.35 < p < 0.45
    run.until(lambda: len(run.log) >= before + 100)
    first = [i for i, _ in run.log[before : before + 100]]
    share = sum(i in BIG_NEW for i in first) / len(first)
    assert abs(share - p) < 0.15, (share, p)
    run.until(lambda: min(p["epoch"] for p in run.positions()) >= 2)
    assert run.epoch(0) == run.epoch(1) == Counter(BIG_OLD | BIG_NEW)
    for key, rows in run.rows.items():
        epoch0 = [i for i, e in rows[at[key]:] if e == 0]
        tail = epoch0[-max(len(epoch0) // 10, 1):]
        assert set(tail) & BIG_NEW and set(tail) & BIG_OLD, f"stream {key}: the last 10% is one side only"


@pytest.mark.parametrize("order, workers, dp, rank", [("sharded", 2, 1, 0), ("sharded", 1, 2, 1),
                                                      ("global", 2, 2, 1)])
def test_exact_resume_in_the_middle_of_the_interleave(big, tokenizer, order, workers, dp, rank, tmp_path):
    """A state saved 7 batches into the interleave (new samples already out), loaded onto the grown list in
    another order, gives the live batches through the rest of epoch 0 and into epoch 1."""
    old, new = big
    live = make(old, tokenizer, rank, dp, workers, order, batch=8)
    it = iter(live)
    for _ in range(6):
        next(it)
    live.add_shards(old + new)
    mixed = [next(it) for _ in range(7)]
    assert set(i for _, texts in mixed for i in ids(tokenizer, texts)) & BIG_NEW, "mixed in already"
    torch.save(live.state_dict(), tmp_path / "state.pt")
    expected = [next(it) for _ in range(70)]  # the rest of epoch 0 and into epoch 1
    assert min(p["epoch"] for p in live._positions) >= 1
    resumed = make(new[::-1] + old, tokenizer, rank, dp, workers, order, batch=8)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    got = iter(resumed)
    assert batches_equal([next(got) for _ in range(70)], expected)


@pytest.mark.parametrize("order, workers, dp, rank", [("sharded", 2, 2, 1), ("global", 1, 2, 0)])
def test_state_before_an_addition_onto_the_grown_list_mixes_like_the_live_one(big, tokenizer, order, workers,
                                                                              dp, rank):
    """A state saved before the addition, loaded onto the grown list: the same joins, the same batches."""
    old, new = big
    live = make(old, tokenizer, rank, dp, workers, order, batch=8)
    it = iter(live)
    for _ in range(9):
        next(it)
    before = live.state_dict()
    live.add_shards(old + new)
    expected = [next(it) for _ in range(30)]
    resumed = make(old + new, tokenizer, rank, dp, workers, order, batch=8)
    resumed.load_state_dict([before] if order == "sharded" else [before, before])
    got = iter(resumed)
    assert batches_equal([next(got) for _ in range(30)], expected)
    assert resumed.state_dict() == live.state_dict()


@pytest.mark.parametrize("order, workers, dp", [("sharded", 0, 1), ("sharded", 2, 2), ("global", 2, 2)])
def test_two_additions_in_one_epoch(big, tokenizer, order, workers, dp):
    """Shards A (ids 1000..1079) join after a fifth of epoch 0, B (1080..1159) after two fifths: B is mixed
    with the merged rest of the old shards and A. Both show up among the 80 rows after B's addition, epochs 0
    and 1 hold every sample once, and a state saved between the additions, loaded onto the list with both,
    gives the live batches."""
    old, new = big
    a, b = set(range(1000, 1080)), set(range(1080, 1160))
    run = Run(old, tokenizer, dp, workers, order)
    per_stream = 320 // run.loaders[0].streams
    run.until(lambda: min(p["consumed"] for p in run.positions()) >= per_stream // 5)
    run.add(old + new[:2])
    run.until(lambda: min(p["consumed"] for p in run.positions()) >= 2 * per_stream // 5)
    between = [ld.state_dict() for ld in run.loaders]
    before = len(run.log)
    run.add(old + new)
    assert all(p["phases"] == [8, 10, 12] and len(p["joins"]) == 2 and p["joins"][0][0] <= p["joins"][1][0]
               for p in run.positions())
    after = [run.step() for _ in range(12)]
    for rank in range(dp):
        resumed = make(old + new, tokenizer, rank, dp, workers, order, batch=8)
        resumed.load_state_dict(between)
        got = iter(resumed)
        assert batches_equal([next(got) for _ in range(12)], [step[rank] for step in after])
    run.until(lambda: len(run.log) >= before + 80)
    first = {i for i, _ in run.log[before : before + 80]}
    assert first & a and first & b
    run.until(lambda: min(p["epoch"] for p in run.positions()) >= 2)
    assert run.epoch(0) == run.epoch(1) == Counter(BIG_OLD | BIG_NEW)


@pytest.mark.parametrize("dp, workers, n_old, n_new", [(2, 2, 8, 4), (2, 2, 8, 1), (2, 2, 2, 1), (1, 2, 8, 3)])
def test_recorded_counts_follow_the_split_across_streams(big, tokenizer, dp, workers, n_old, n_new):
    """joins = [c, old items left after c, new items] per stream: summed over the streams the new items are the
    added samples and c + old the old ones, also when a phase has fewer shards than streams (split by index)."""
    old, new = big[0][:n_old], big[1][:n_new]
    loaders = [make(old, tokenizer, r, dp, workers) for r in range(dp)]
    its = [iter(ld) for ld in loaders]
    for _ in range(3):
        for it in its:
            next(it)
    for ld in loaders:
        ld.add_shards(old + new, epoch=max(x.epoch for x in loaders))
    joins = [j for ld in loaders for p in ld._positions for j in p["joins"]]
    assert len(joins) == dp * workers
    assert sum(j[2] for j in joins) == 40 * n_new
    assert sum(j[0] + j[1] for j in joins) == 40 * n_old


@pytest.mark.parametrize("claim", [0, 1000])
def test_wrong_counts_change_the_order_not_the_samples(big, tokenizer, tmp_path, claim):
    """The coin only orders: with manifests claiming 0 or 1000 samples per new shard and a truncated new tar
    (counted up to the damage, which then adds a corrupt_tar item), the epoch still holds every readable sample
    once, and two runs agree."""
    from pretrain.data.manifest import write_manifest

    old = big[0][:4]  # ids 0..159
    lying = new_shards(tmp_path / "lying", 2, 20, base=1000)
    write_manifest(tmp_path / "lying", {"shards": [{"path": os.path.basename(p), "samples": claim} for p in lying]})
    whole = new_shards(tmp_path / "whole", 1, 20, base=2000)[0]
    data = open(whole, "rb").read()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "shard-000000.tar").write_bytes(data[: data.find(b"item02012.") + 600])
    grown = old + lying + [str(tmp_path / "cut" / "shard-000000.tar")]
    readable = set(range(160)) | set(range(1000, 1040)) | set(range(2000, 2012))

    def once():
        loader = make(old, tokenizer, workers=0, batch=4)
        it = iter(loader)
        rows = [i for _ in range(5) for i in ids(tokenizer, next(it)[1])]
        loader.add_shards(grown)
        while len(rows) < len(readable):
            rows += ids(tokenizer, next(it)[1])
        return rows, loader.skipped

    rows, skipped = once()
    assert Counter(rows[: len(readable)]) == Counter(readable) and skipped == {"corrupt_tar": 1}
    assert once() == (rows, skipped)


def test_states_without_joins_replay_their_phases_in_turn(synthetic_shards, added, tokenizer):
    """A state saved before interleaving (phases but no joins) goes on as it was made: the rest of the old
    shards first, then the new ones; the next epoch is all shards together."""
    live = make(synthetic_shards, tokenizer)
    it = iter(live)
    first = [i for _ in range(4) for i in ids(tokenizer, next(it)[1])]
    live.add_shards(synthetic_shards + added)
    state = live.state_dict()
    assert state["positions"][0]["joins"] == [[12, 48, 30]]
    for position in state["positions"]:
        del position["joins"]
    resumed = make(synthetic_shards + added, tokenizer)
    resumed.load_state_dict(state)
    assert resumed.state_dict()["positions"][0]["joins"] == [[None, 0, 0]]
    got = iter(resumed)
    rest = [i for _ in range(26) for i in ids(tokenizer, next(got)[1])]  # 78 = the rest of epoch 0
    assert set(first + rest[:48]) == OLD and set(rest[48:]) == set(range(100, 130))
    assert resumed._positions[0]["epoch"] == 0 and resumed._positions[0]["consumed"] == 90
    assert resumed.state_dict()["positions"][0]["joins"] == [[None, 0, 0]]
    rest = [i for _ in range(30) for i in ids(tokenizer, next(got)[1])]
    assert sorted(rest) == sorted(OLD | set(range(100, 130))) and resumed._positions[0]["phases"] == [7]
