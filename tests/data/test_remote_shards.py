"""Remote shard specs (pipe:, http://, file:): the same batches as local paths, exact resume, retries of a
dropped connection and a counted skip of a shard that never reads (in-process, a local http.server thread)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from pretrain.data import manifest
from pretrain.data.manifest import count_samples, load_shards, load_shards_with_counts, write_manifest
from pretrain.data.pipeline import TrainLoader, read_shard

from .helpers import ShardServer
from .test_pipeline import ids, take


@pytest.fixture(scope="module")
def server(synthetic_shards):
    served = ShardServer(Path(synthetic_shards[0]).parent)
    yield served
    served.server.shutdown()
    served.server.server_close()


@pytest.fixture
def http(server):
    server.drops.clear()
    server.requests.clear()
    return server


def specs(kind: str, shards: list[str], server: ShardServer) -> list[str]:
    if kind == "pipe":
        return [f"pipe:cat {p}" for p in shards]
    if kind == "file":
        return [f"file:{p}" for p in shards]
    return [f"{server.base}/{Path(p).name}" for p in shards]


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


@pytest.mark.parametrize("kind,workers", [("pipe", 0), ("http", 0), ("http", 1), ("file", 0)])
def test_remote_specs_give_the_same_batches_and_resume_exactly(synthetic_shards, tokenizer, http, kind, workers):
    make = lambda shards: TrainLoader(shards, tokenizer, 12, 8, 0, 1, workers=workers,  # noqa: E731
                                      shuffle_buffer=10, read_backoff=0)
    expected = take(make(synthetic_shards), 11)  # 88 samples: into the second epoch of 60
    remote = specs(kind, synthetic_shards, http)
    assert same(take(make(remote), 11), expected)
    first = make(remote)
    got = take(first, 4)  # mid-epoch
    resumed = make(remote)
    resumed.load_state_dict(first.state_dict())
    assert same(got + take(resumed, 7), expected)
    assert resumed.skipped == {}


def test_dropped_connection_is_retried_and_the_epoch_is_whole(synthetic_shards, tokenizer, http, caplog):
    remote = specs("http", synthetic_shards, http)
    http.drops["shard-000001.tar"] = 1
    with caplog.at_level(logging.INFO, logger="pretrain.data.pipeline"):
        got = take(TrainLoader(remote, tokenizer, 12, 5, 0, 1, workers=0, shuffle_buffer=10, read_backoff=0), 12)
    assert http.requests["shard-000001.tar"] == 2
    assert f"shard {remote[1]}: read 1 of 3 failed" in caplog.text
    assert sorted(i for _, texts in got for i in ids(tokenizer, texts)) == list(range(60))  # one epoch, each once
    assert same(got, take(TrainLoader(synthetic_shards, tokenizer, 12, 5, 0, 1, workers=0, shuffle_buffer=10), 12))


def test_shard_that_never_reads_is_a_counted_skip(synthetic_shards, tokenizer, http, caplog):
    remote = specs("http", synthetic_shards, http)
    http.drops["shard-000001.tar"] = -1
    half = Path(synthetic_shards[1]).stat().st_size // 2  # the samples whole in the first half come out once
    read = sum(isinstance(x, dict) for x in read_shard(f"pipe:head -c {half} {synthetic_shards[1]}", attempts=1))
    assert 0 < read < 15
    loader = TrainLoader(remote, tokenizer, 12, 1, 0, 1, workers=0, shuffle_buffer=10, read_backoff=0)
    with caplog.at_level(logging.WARNING, logger="pretrain.data.pipeline"):
        epoch = [i for _, texts in take(loader, 45 + read) for i in ids(tokenizer, texts)]
    assert sorted(epoch) == [*range(15), *range(15, 15 + read), *range(30, 60)]
    assert loader.skipped == {"unreadable_shard": 1} and http.requests["shard-000001.tar"] == 3
    assert caplog.text.count(f"skipping shard {remote[1]}: unreadable after 3 reads") == 1
    it = iter(loader)  # training goes on: the next epoch, the same skip again
    assert all(i not in range(15 + read, 30) for _ in range(50) for i in ids(tokenizer, next(it)[1]))
    assert loader.skipped == {"unreadable_shard": 2}


def test_pipe_failures(synthetic_shards, caplog):
    with caplog.at_level(logging.INFO, logger="pretrain.data.pipeline"):
        assert list(read_shard("pipe:exit 3", attempts=2, backoff=0)) == ["unreadable_shard"]
    assert "command exit status 3" in caplog.text and "unreadable after 2 reads" in caplog.text
    caplog.clear()
    whole = list(read_shard(f"pipe:cat {synthetic_shards[0]}; exit 4", backoff=0))  # the tar was whole: kept
    assert len(whole) == 15 and all(isinstance(x, dict) for x in whole)
    assert "after its end-of-archive marker" in caplog.text
    refused = list(read_shard("http://127.0.0.1:9/shard.tar", attempts=2, backoff=0))  # nothing listens on 9
    assert refused == ["unreadable_shard"]


def test_specs_and_counts(synthetic_shards, http, tmp_path, monkeypatch):
    local = synthetic_shards
    directory = Path(local[0]).parent
    assert load_shards(f"file:{directory}/shard-{{000000..000001}}.tar") == local[:2]
    urls = load_shards(f"{http.base}/shard-{{000000..000003}}.tar")
    assert urls == specs("http", local, http)
    assert load_shards(f"pipe:cat {local[0]},{local[1]}") == [f"pipe:cat {local[0]}", local[1]]
    assert load_shards([f"pipe:cat {local[0]} {local[1]} | cat", local[2]]) == [  # a list item: taken whole
        f"pipe:cat {local[0]} {local[1]} | cat", local[2]]
    assert count_samples([f"pipe:cat {local[0]}", urls[1]]) == 30  # read once each
    assert http.requests == {"shard-000001.tar": 1}
    count_samples([urls[1]])
    assert http.requests == {"shard-000001.tar": 1}  # cached

    mix = tmp_path / "mix"
    mix.mkdir()
    never = "http://127.0.0.1:9/never-000000.tar"  # given with its count: never read
    write_manifest(mix, {"shards": [{"path": never, "samples": 7}, {"path": f"file:{local[3]}"},
                                    {"path": "../" + Path(local[2]).name}]})
    (tmp_path / Path(local[2]).name).write_bytes(Path(local[2]).read_bytes())
    assert load_shards_with_counts(mix) == [(never, 7), (local[3], 15), (str(tmp_path / Path(local[2]).name), 15)]
    assert count_samples(load_shards(mix)) == 37  # the list of specs: the manifest's count is remembered
    write_manifest(mix, {"shards": [{"path": f"pipe:cat {local[0]}"}]})
    with pytest.raises(ValueError, match="may not be a pipe"):
        load_shards(mix)
    with pytest.raises(ValueError, match="remote manifests"):
        load_shards(f"{http.base}/manifest.json")
    assert manifest.shard_identity(urls[0]) == urls[0]
    assert manifest.shard_identity(f"file:{local[0]}") == manifest.shard_identity(local[0])


def test_http_resume_survives_another_host(synthetic_shards, tokenizer, http):
    """The layout names a URL by its path's last two parts, so a resume from another server (or port) is exact,
    and a pipe:cat of the same files by the same names as the local paths."""
    make = lambda shards: TrainLoader(shards, tokenizer, 12, 8, 0, 1, workers=0, shuffle_buffer=10)  # noqa: E731
    expected = take(make(synthetic_shards), 6)
    first = make(specs("http", synthetic_shards, http))
    got = take(first, 3)
    other = ShardServer(Path(synthetic_shards[0]).parent)
    try:
        resumed = make(specs("http", synthetic_shards, other))
        resumed.load_state_dict(first.state_dict())
        assert same(got + take(resumed, 3), expected)
    finally:
        other.server.shutdown()
        other.server.server_close()
    local = make(synthetic_shards)
    got = take(local, 3)
    piped = make(specs("pipe", synthetic_shards, http))
    piped.load_state_dict(local.state_dict())
    assert same(got + take(piped, 3), expected)


def test_read_attempts_and_backoff_are_config_keys(synthetic_shards, tokenizer, http, tmp_path, caplog):
    """data.read_attempts / data.read_backoff reach the trainer's loader (pretrain.trainer.remote_reads): with 2
    attempts a shard that never reads is skipped after 2 requests, not the default 3; bad values name the key."""
    from pretrain.config import ConfigError, load_run_config
    from pretrain.trainer import remote_reads
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {{shards: {synthetic_shards[0]}, tokenizer: {tokenizer.model_path}}}\n")
    cfg = load_run_config(config, ["data.read_attempts=2", "data.read_backoff=0"])
    assert remote_reads(cfg.data) == {"read_attempts": 2, "read_backoff": 0}
    assert remote_reads(load_run_config(config, []).data) == {}  # unset: the loader's defaults
    remote = specs("http", synthetic_shards, http)
    http.drops["shard-000001.tar"] = -1
    loader = TrainLoader(remote, tokenizer, 12, 1, 0, 1, workers=0, shuffle_buffer=10, **remote_reads(cfg.data))
    with caplog.at_level(logging.WARNING, logger="pretrain.data.pipeline"):
        take(loader, 50)
    assert http.requests["shard-000001.tar"] == 2 and "unreadable after 2 reads" in caplog.text
    for bad, key in (("data.read_attempts=0", "data.read_attempts"), ("data.read_attempts=1.5", "data.read_attempts"),
                     ("data.read_backoff=-1", "data.read_backoff"), ("data.read_backoff=nan", "data.read_backoff")):
        with pytest.raises(ConfigError, match=key):
            load_run_config(config, [bad])
