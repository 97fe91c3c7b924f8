"""Training loader: webdataset tar shards -> (images, token ids) batches, infinite, resumable to the sample.

How the stream is laid out (all of it is a pure function of seed, epoch and the layout, hence resumable):
- Logical streams: stream = dp_rank * W + worker, W = max(workers, 1), streams = dp_world * W. Epoch e permutes
  the shard list with (seed, e), the same on every rank; stream s reads perm[s::streams]. With fewer shards than
  streams every stream reads all shards and keeps item i iff i % streams == s (logged once).
- Each stream runs its own infinite sequence of epochs through a shuffle buffer seeded by (seed, epoch, rank,
  worker), and builds whole batches (DataLoader(batch_size=None)), so a batch comes from one worker and may
  straddle an epoch boundary. Augmentation is seeded per sample by (seed, epoch, key).
- Bad samples never stop training. They are counted by reason when they leave the shuffle buffer, so counts
  and positions agree: corrupt_tar (a damaged or unreadable tar becomes one such item after the samples read
  before the damage), unreadable_shard (a remote shard that failed every read, after the samples read whole),
  missing_image, missing_caption, bad_caption (not UTF-8), empty_caption, too_large (header
  width * height > max_pixels, checked before decoding), bad_image (undecodable or truncated).
  A full batch is handed out only when the next usable sample turns up or its epoch ends, so it also counts
  the bad items right after it: once the batch that ends an epoch is consumed, `skipped` covers that epoch.

Exact resume: every batch carries its stream's position (epoch, items taken from the shuffle buffer in that
epoch, skipped ones included) and cumulative skip counts. The loader records them for the last batch consumed
from each worker, plus which worker is due next (the DataLoader takes batches round-robin from worker 0). On
resume the physical workers are rotated so the due worker comes first, and each stream replays its epoch
through the same shuffle buffer without decoding anything, dropping the items already used.

Growing data (`TrainLoader.add_shards`, or a state saved before an addition loaded onto the grown list): the
loader keeps its place and the new shards join the stream at once. The shards are kept as the old ones in their
order, then the added ones. A stream's epoch is built from phases, recorded in its position as `phases`, the
shard counts at the phase ends ([n0, n1, ...]; [len(shards)] without an addition). Phase 0 is exactly the
stream described above over shards[:n0] (same permutation, same shuffle buffer); phase k > 0 is the stream's
share of shards[n(k-1):n(k)], the shards added during that epoch, permuted with (seed, epoch, k) and split
across streams like phase 0, through its own shuffle buffer seeded with k as well. Phase k joins at c_k, the
items of the epoch the stream had consumed at the addition: the first c_k items of the merged earlier phases
stay as they were, and the rest of the epoch is a seeded interleave (`interleave`) of what those phases still
hold and phase k. A coin seeded by (seed, epoch, rank, worker, k) takes phase k with probability
new / (new + old), the items each side still holds by the shards' sample counts (manifest.json, else a header
scan; cached per shard), so that the merge is uniformly random: the share of new samples right after the
addition is new / (new + old left) and both sides run out together. The counts only bias the coin: running out
is seen on the iterators, so a wrong count (a damaged tar) changes the order, never what comes out. Positions
record `joins`, one [c_k, old items left after c_k, new items] per phase k > 0, so the state stays plain ints
and replaying an epoch in progress needs neither the counts nor any decoding. A second addition in the same
epoch interleaves its phase with the merged rest of the earlier ones the same way. So in that epoch nothing
seen is repeated and every old and new sample comes once; the next epoch permutes all shards together.
Streams drift apart (a stream with fewer samples per epoch goes through epochs faster), so an addition joins
in one epoch E for all streams: the furthest epoch any stream is in (`loader.epoch`; with sharded order and
several DP ranks the caller passes the max over the ranks, and a resume takes the max over the saved ranks).
Streams in E take the phase at their position; a stream behind keeps the addition as `later` ([[E, count]]),
finishes its earlier epochs without it and mixes it into epoch E from its start (c = 0). Every epoch therefore
holds each sample once over all streams: the old ones before E, old and new from E on. A live iterator picks
an addition up at its next batch: it restarts its DataLoader from the positions of the last consumed batches
(prefetched batches are dropped and replayed). States saved before interleaving (positions without `joins`)
replay their phases one after the other, as they were made.

Remote shards: a shard may be what webdataset's gopen reads (`pipe:CMD`, `http(s)://`, ...; `file:PATH` is a local
path). `read_shard` streams it through the same tar reader, and yields a sample only once it is whole. A transient
error (connection refused/reset, a stream that ends early, a command exiting non-zero before the tar's end) re-reads
the shard from the start, up to `read_attempts` reads with backoff `read_backoff`, 2 x, ... seconds, skipping the
samples this pass already yielded (a re-read gives the same samples in the same order): nothing comes twice and
the item count replay relies on is unchanged. After the last failed read the stream goes on with one skip
`unreadable_shard` (logged once per pass, with the shard's name). Exact resume works as for local files (the
replay re-reads, without decoding, the part of the epoch already consumed); it assumes each shard reads the same
as before: one that failed then and reads now (or the reverse) shifts that stream's epoch.

Workers start from a forkserver (`worker_context`), never by forking the training process: a rank has threads
(gloo's, tqdm's monitor, TensorBoard's writer), and a fork copies any lock one of them holds at that moment, which
can hang the child (seen as a worker stuck in `Popen._launch` while the other rank waits in a collective). The
server is a fresh, single-threaded interpreter that imports torch, this module and the tokenizer's once
(`set_forkserver_preload`); each DataLoader forks its workers from it and hands them the dataset pickled (the
loader, tokenizer included, and the positions): the state they start from is exactly what a fork would copy.

Resume checks the layout: seed, dp_world, workers, shuffle_buffer, order and the shard list (short names, the last
two path parts, so moving the data is harmless; of a URL, of its path, so another host or port is too). If only
shards were added (the saved list is contained in the new one, with multiplicity), the saved positions are kept and
the addition is applied at them, exactly as `add_shards` there would have. Any other change makes exact resume
impossible: every stream starts afresh at the epoch after the furthest one reached, and a warning says so.
Version-1 states (before growing data; they hold a hash of the names) resume exactly only onto the same shard list,
else they take that fallback.
"""
from __future__ import annotations

import hashlib
import http.client
import io
import logging
import multiprocessing
import random
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict, deque
from itertools import islice
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys

from .manifest import is_remote, local_path, scheme, shard_identity, shard_sample_counts
from .tario import TarCorrupt, tar_members
from .transforms import normalize_batch, train_transform

log = logging.getLogger(__name__)

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
BARREN_EPOCHS = 3  # a stream that yields no usable sample for this many epochs in a row raises
READ_ATTEMPTS = 3  # reads of a remote shard before it becomes an "unreadable_shard" skip
READ_BACKOFF = 1.0  # seconds before the first retry, doubled after each further failure
HTTP_TIMEOUT = 60.0  # seconds a socket operation of an http(s) read may block


class NoUsableData(RuntimeError):
    """A stream that found no usable sample in BARREN_EPOCHS epochs: every shard it reads is bad (main.py: one
    line, exit status 2)."""


def worker_context(tokenizer=None) -> multiprocessing.context.BaseContext | None:
    """The multiprocessing context DataLoader workers start in: forkserver where the platform has it (module
    docstring). The server preloads torch, this module and the tokenizer's module; the preload list is read when
    the server starts (the first call that starts workers, or `start_worker_server`), later calls leave it."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None  # Windows: spawn is the default there, and the only way
    context = multiprocessing.get_context("forkserver")
    modules = ["torch", __name__] + ([type(tokenizer).__module__] if tokenizer is not None else [])
    context.set_forkserver_preload(list(dict.fromkeys(modules)))
    return context


def start_worker_server(tokenizer=None) -> None:
    """Start the forkserver now, so that its imports (seconds) overlap the caller's set-up rather than delaying
    the first batch. It is started once per process and serves every later DataLoader."""
    if worker_context(tokenizer) is not None:
        from multiprocessing import forkserver
        forkserver.ensure_running()


def seed_of(*parts) -> int:
    """A stable 63-bit seed from any printable parts (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


def read_shard(path: str, attempts: int | None = None, backoff: float | None = None) -> Iterator[dict | str]:
    """Samples (dicts of raw bytes keyed by extension, plus __key__) of one tar, grouped by webdataset. If a local
    tar is damaged, the samples before the damage come out (the one being read, with the members read whole),
    then one "corrupt_tar". A remote spec (`manifest.is_remote`: pipe:, http(s):, ...) is streamed by
    `_read_remote`, retried on transient errors; `file:PATH` is a local path."""
    if is_remote(path):
        yield from _read_remote(path, READ_ATTEMPTS if attempts is None else attempts,
                                READ_BACKOFF if backoff is None else backoff)
        return
    errors: list[Exception] = []

    def members(f):
        try:
            for member in tar_members(f):
                yield {**member, "__url__": path}
        except Exception as exn:  # truncated/corrupt tar: end this shard, keep what was read
            errors.append(exn)

    try:
        with open(local_path(path), "rb") as f:
            yield from group_by_keys(members(f))
    except Exception as exn:  # vanished file, duplicate member name
        errors.append(exn)
    if errors:
        log.warning("skipping the rest of shard %s: %s", path, errors[0])
        yield "corrupt_tar"


class _Transient(OSError):
    """A remote read that may succeed when tried again (the stream ended early, the command failed)."""


class _Stream:
    """A remote shard's bytes: a pipe: command's stdout (shell, like gopen's pipe:), an http(s) response
    (urllib), or another gopen scheme (webdataset's gopen). `eof` is set by a short read; `finish()` checks the
    end (a command's exit status); `close()` ends it early (kills a command still running)."""

    def __init__(self, spec: str):
        self.spec, self.eof, self.proc = spec, False, None
        kind = scheme(spec)
        if kind == "pipe":
            self.proc = subprocess.Popen(spec[5:], shell=True, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
            self.raw = self.proc.stdout
        elif kind in ("http", "https"):
            self.raw = urllib.request.urlopen(spec, timeout=HTTP_TIMEOUT)
        else:
            from webdataset.gopen import gopen
            self.raw = gopen(spec, "rb")
            self.proc = getattr(self.raw, "proc", None)

    def read(self, n: int) -> bytes:
        data = self.raw.read(n)
        if len(data) < n:
            self.eof = True
        return data

    def status(self) -> str:
        """Why a stream that ended early did: the command's exit status, if it has one."""
        if self.proc is None:
            return ""
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return ""
        return f" (command exit status {code})" if code not in (0, 141) else ""

    def finish(self) -> None:
        """After the end-of-archive marker: read the rest (padding), then check the command's exit status. A
        failure here is logged, not retried: every sample was read whole."""
        try:
            while self.raw.read(1 << 16):
                pass
            status = self.status() if self.proc is not None else ""
            if status:
                raise _Transient(status.strip(" ()"))
        except Exception as exn:
            log.warning("shard %s: error after its end-of-archive marker (all samples read): %s", self.spec, exn)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        try:
            self.raw.close()
        except Exception:  # gopen's Pipe raises on a killed command
            pass
        if self.proc is not None:
            self.proc.wait()


def _persistent_http(exn: Exception) -> bool:
    """An http error that a retry will not cure: a 4xx status other than 408 (timeout) and 429 (slow down)."""
    return isinstance(exn, urllib.error.HTTPError) and 400 <= exn.code < 500 and exn.code not in (408, 429)


def _read_remote(spec: str, attempts: int, backoff: float) -> Iterator[dict | str]:
    """The samples of a remote shard, streamed through `tar_members`. A sample is yielded only once it is whole
    (when the next one starts, or at the clean end of the tar). A transient error (a connection refused, reset
    or timed out, a stream that ends early, a command exiting non-zero, an http 5xx) re-reads the shard from the
    start, up to `attempts` reads in all with `backoff`, 2 x backoff, ... seconds between them, and skips the
    samples already yielded in this pass: a re-read gives the same samples in the same order, so nothing comes
    twice and replay by counting stays exact. After the last failed read one "unreadable_shard" follows the
    samples yielded (logged once, with the shard's name). A damaged tar (a bad header in a stream that did not
    end early, a duplicate member) is not retried: one "corrupt_tar", as for a local file."""
    delivered, error = 0, None
    for attempt in range(1, max(attempts, 1) + 1):
        if attempt > 1:
            log.info("shard %s: read %d of %d failed (%s); retrying from the start, skipping the %d samples "
                     "already read", spec, attempt - 1, attempts, error, delivered)
            time.sleep(backoff * 2 ** (attempt - 2))
        stream = None
        try:
            stream = _Stream(spec)
            members = ({**member, "__url__": spec} for member in tar_members(stream))
            for seen, sample in enumerate(group_by_keys(members), 1):
                if seen > delivered:
                    delivered = seen
                    yield sample
            stream.finish()
            return
        except TarCorrupt as exn:
            if stream is None or not stream.eof:
                log.warning("skipping the rest of shard %s: %s", spec, exn)
                yield "corrupt_tar"
                return
            error = f"{exn}{stream.status()}"
        except ValueError as exn:  # duplicate member name, undecodable name
            log.warning("skipping the rest of shard %s: %s", spec, exn)
            yield "corrupt_tar"
            return
        except (OSError, http.client.HTTPException) as exn:
            error = f"{type(exn).__name__}: {exn}{stream.status() if stream is not None else ''}"
            if _persistent_http(exn):
                attempts = attempt
                break
        finally:
            if stream is not None:
                stream.close()
    log.warning("skipping shard %s: unreadable after %d reads (%s); %d samples were read", spec, attempts, error,
                delivered)
    yield "unreadable_shard"


def phase_order(seed: int, epoch: int, phase: int, lo: int, hi: int) -> list[int]:
    """The indices of shards[lo:hi] in the order of that phase of the epoch (phase 0: all shards permuted)."""
    key = ("shards", seed, epoch) + ((phase,) if phase else ())
    return [lo + i for i in random.Random(seed_of(*key)).sample(range(hi - lo), hi - lo)]


def interleave(old: Iterator, new: Iterator, old_left: int, new_left: int, rng: random.Random) -> Iterator:
    """A seeded merge of two iterators, each kept in its order. Each draw takes from `new` with probability
    new_left / (old_left + new_left), the items each side still holds by the counts (a fair coin once both
    count 0): with right counts every interleaving is equally likely, so the share of `new` in any stretch is
    about new_left / (old_left + new_left) at the start, and both sides run out together. The counts only bias
    the coin; running out is seen on the iterators: the other side then continues alone. A wrong count changes
    the order, never what comes out."""
    old_left, new_left = max(old_left, 0), max(new_left, 0)
    while True:
        total = old_left + new_left
        take_new = rng.randrange(total) < new_left if total else rng.random() < 0.5
        item = next(new if take_new else old, _END)
        if item is _END:
            yield from (old if take_new else new)
            return
        if take_new:
            new_left = max(new_left - 1, 0)
        else:
            old_left = max(old_left - 1, 0)
        yield item


def _joined(old: Iterator, new: Iterator, join: list, rng: random.Random) -> Iterator:
    """`old` as it was for the first c items, then the rest of it interleaved with `new` (join = [c, items
    `old` holds after c, items of `new`]; c None, from a state saved before interleaving: all of `old` first)."""
    c, old_left, new_left = join
    yield from old if c is None else islice(old, c)
    yield from interleave(old, new, old_left, new_left, rng)


_END = object()


def shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    if size <= 1:
        yield from items
        return
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


class _Streams(IterableDataset):
    """What each DataLoader worker runs: one logical stream of whole batches, starting at a saved position."""

    def __init__(self, loader: "TrainLoader", positions: list[dict], rotate: int):
        self.loader, self.positions, self.rotate = loader, positions, rotate
        self.shards = list(loader.shards)  # this DataLoader's list: an addition restarts the DataLoader

    def phase_items(self, epoch: int, phase: int, lo: int, hi: int, stream: int) -> Iterator[dict | str]:
        """The stream's share of shards[lo:hi] (phase 0: lo = 0, the shards known when the epoch began)."""
        ld = self.loader
        order = phase_order(ld.seed, epoch, phase, lo, hi)
        if len(order) >= ld.streams:
            for index in order[stream :: ld.streams]:
                yield from read_shard(self.shards[index], ld.read_attempts, ld.read_backoff)
            return
        i = 0
        for index in order:
            for item in read_shard(self.shards[index], ld.read_attempts, ld.read_backoff):
                if i % ld.streams == stream:
                    yield item
                i += 1

    def epoch_items(self, epoch: int, phases: list[int], joins: list[list], stream: int,
                    worker: int) -> Iterator[dict | str]:
        """The stream's epoch: each phase through its own shuffle buffer, phase k joining the merged earlier
        phases after the first c items of the epoch, interleaved from there (module docstring)."""
        ld, lo, merged = self.loader, 0, iter(())
        for phase, hi in enumerate(phases):
            key = ("buffer", ld.seed, epoch, ld.stream_rank, worker) + ((phase,) if phase else ())
            items = shuffled(self.phase_items(epoch, phase, lo, hi, stream), ld.shuffle_buffer,
                             random.Random(seed_of(*key)))
            if phase == 0:
                merged = items
            else:
                coin = random.Random(seed_of("join", ld.seed, epoch, ld.stream_rank, worker, phase))
                merged = _joined(merged, items, joins[phase - 1], coin)
            lo = hi
        return merged

    def decode(self, item: dict | str, epoch: int) -> tuple[np.ndarray, str] | str:
        """(cropped HWC uint8 RGB image, caption) or a skip reason."""
        if isinstance(item, str):
            return item
        ext = next((e for e in IMAGE_EXTS if e in item), None)
        if ext is None:
            return "missing_image"
        if "txt" not in item:
            return "missing_caption"
        try:
            caption = item["txt"].decode("utf-8")
        except UnicodeDecodeError:
            return "bad_caption"
        if not caption.strip():
            return "empty_caption"
        try:
            image = Image.open(io.BytesIO(item[ext]))  # reads the header only
            if image.width * image.height > self.loader.max_pixels:
                return "too_large"
            image.load()
            rng = random.Random(seed_of("augment", self.loader.seed, epoch, item["__key__"]))
            return np.asarray(self.loader.transform.crop(image, rng)), caption
        except Image.DecompressionBombError:
            return "too_large"
        except Exception:  # PIL raises many types for broken files (OSError, SyntaxError, ValueError, ...)
            return "bad_image"

    def batch(self, images, captions, worker, epoch, consumed, skipped, phases, joins, later):
        meta = {"worker": worker, "epoch": epoch, "consumed": consumed, "skipped": dict(skipped),
                "phases": list(phases), "joins": [list(x) for x in joins], "later": [list(x) for x in later]}
        rows = self.loader.rows  # global order: this rank's slice of the global batch
        return normalize_batch(images[rows]), self.loader.tokenizer(captions[rows]), meta

    def __iter__(self):
        ld = self.loader
        info = get_worker_info()
        worker = ((info.id if info else 0) + self.rotate) % ld.workers_per_rank
        stream = ld.stream_rank * ld.workers_per_rank + worker
        position = self.positions[worker]
        epoch, skip_items, phases = position["epoch"], position["consumed"], list(position["phases"])
        joins = [list(x) for x in position["joins"]]  # [c, old items left after c, new items] per phase k > 0
        later = [list(x) for x in position["later"]]  # [epoch, shard count]: additions waiting for that epoch
        skipped = Counter(position["skipped"])
        images, captions, barren = [], [], 0
        while True:
            used = consumed = 0
            for consumed, item in enumerate(self.epoch_items(epoch, phases, joins, stream, worker), 1):
                if consumed <= skip_items:  # fast-forward after resume: no decoding
                    continue
                out = self.decode(item, epoch)
                if isinstance(out, str):
                    skipped[out] += 1
                    continue
                if len(images) == ld.stream_batch:  # a full batch leaves only now, so it counts the skips after it
                    yield self.batch(images, captions, worker, epoch, consumed - 1, skipped, phases, joins,
                                     later)
                    images, captions = [], []
                images.append(out[0])
                captions.append(out[1])
                used += 1
            if len(images) == ld.stream_batch:
                yield self.batch(images, captions, worker, epoch, max(consumed, skip_items), skipped, phases,
                                 joins, later)
                images, captions = [], []
            barren = barren + 1 if used == 0 else 0
            if barren >= BARREN_EPOCHS:
                raise NoUsableData(f"data stream {stream} (rank {ld.stream_rank}, worker {worker}) found no usable "
                                   f"sample in {barren} epochs; skipped {dict(skipped)}")
            epoch, skip_items = epoch + 1, 0  # every shard reached so far, then what joins in this epoch
            phases = [phases[-1]] + [count for at, count in later if at == epoch]
            later = [x for x in later if x[0] != epoch]
            shares = ld._phase_shares(self.shards, epoch, phases, stream) if len(phases) > 1 else []
            joins = [[0, sum(shares[:k]), shares[k]] for k in range(1, len(phases))]  # mixed from the start


class TrainLoader:
    """Infinite, resumable batches of (float32 [B,3,S,S] normalised images, int64 [B,context] tokens).

    State (see module docstring) is per DP rank; `load_state_dict` also accepts the list of all ranks' states
    and picks this rank's entry. Keep one live iterator per loader: its batches update the loader's state.

    order="sharded" (default): each DP rank reads its own shards, so the global batch depends on dp_world.
    order="global": every rank reads the same stream of global batches (batch_size * dp_world samples) and keeps
    rows [dp_rank*batch_size, (dp_rank+1)*batch_size). The sample order then depends only on the global batch,
    so runs at different layouts see the same data and a resume survives a change of dp_world (growth, resharding,
    parity tests). It costs dp_world x the reading and decoding, so use it where that matters.
    """

    def __init__(self, shards: list[str], tokenizer, image_size: int, batch_size: int, dp_rank: int, dp_world: int,
                 workers: int = 1, seed: int = 0, shuffle_buffer: int = 1000, max_pixels: int = 50_000_000,
                 scale=(0.9, 1.0), order: str = "sharded", read_attempts: int = READ_ATTEMPTS,
                 read_backoff: float = READ_BACKOFF):
        if not shards:
            raise ValueError("TrainLoader needs at least one shard")
        if not 0 <= dp_rank < dp_world:
            raise ValueError(f"dp_rank {dp_rank} outside dp_world {dp_world}")
        self.shards, self.tokenizer, self.batch_size = list(shards), tokenizer, batch_size
        self.dp_rank, self.dp_world, self.workers, self.seed = dp_rank, dp_world, workers, seed
        self.shuffle_buffer, self.max_pixels = shuffle_buffer, max_pixels
        self.read_attempts, self.read_backoff = read_attempts, read_backoff  # remote shards (read_shard)
        self.transform = train_transform(image_size, scale)
        if order not in ("sharded", "global"):
            raise ValueError(f"order must be 'sharded' or 'global', got {order!r}")
        self.order = order
        is_global = order == "global"
        self.stream_rank, self.stream_world = (0, 1) if is_global else (dp_rank, dp_world)
        self.stream_batch = batch_size * dp_world if is_global else batch_size
        self.rows = slice(dp_rank * batch_size, (dp_rank + 1) * batch_size) if is_global else slice(None)
        self.workers_per_rank = max(workers, 1)
        self.streams = self.stream_world * self.workers_per_rank
        if len(self.shards) < self.streams:
            log.warning("%d shards < %d streams (dp_world %d x workers %d): every stream reads all shards and "
                        "keeps samples by index modulo %d", len(self.shards), self.streams, dp_world,
                        self.workers_per_rank, self.streams)
        self._positions = self._fresh_positions(0)
        self._next_worker = 0
        self._generation = 0  # bumped when the shards or positions change under a live iterator
        self._sample_counts: dict[str, int] = {}  # per shard path, read when shards are added

    def _fresh_positions(self, epoch: int) -> list[dict]:
        return [{"epoch": epoch, "consumed": 0, "skipped": {}, "phases": [len(self.shards)], "joins": [],
                 "later": []} for _ in range(self.workers_per_rank)]

    def _counts(self, shards: list[str]) -> list[int]:
        """Sample counts of `shards` (manifest.shard_sample_counts), cached per path."""
        missing = [p for p in dict.fromkeys(shards) if p not in self._sample_counts]
        if missing:
            self._sample_counts.update(zip(missing, shard_sample_counts(missing)))
        return [self._sample_counts[p] for p in shards]

    def _phase_shares(self, shards: list[str], epoch: int, phases: list[int], stream: int) -> list[int]:
        """Items of each phase of the epoch for the stream, by the shards' sample counts: its shards' counts,
        or with fewer shards than streams its indices i (over the phase's samples) with i % streams == stream."""
        counts, shares, lo = self._counts(shards[: phases[-1]]), [], 0
        for phase, hi in enumerate(phases):
            order = phase_order(self.seed, epoch, phase, lo, hi)
            if len(order) >= self.streams:
                shares.append(sum(counts[i] for i in order[stream :: self.streams]))
            else:
                shares.append(len(range(stream, sum(counts[lo:hi]), self.streams)))
            lo = hi
        return shares

    def _names(self) -> list[str]:
        return [_short_name(p) for p in self.shards]

    def _layout(self) -> dict:
        return {"shards": self._names(), "seed": self.seed, "dp_world": self.stream_world,
                "workers": self.workers_per_rank, "shuffle_buffer": self.shuffle_buffer, "order": self.order}

    def _layout_v1(self) -> dict:
        names = "\n".join(self._names()).encode()
        return {"shards_sha256": hashlib.sha256(names).hexdigest(), "num_shards": len(self.shards), "seed": self.seed,
                "dp_world": self.stream_world, "workers": self.workers_per_rank, "shuffle_buffer": self.shuffle_buffer,
                "order": self.order}

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:  # one DataLoader per generation: an addition (or a loaded state) restarts it at the positions
            generation = self._generation
            if any(p["later"] for p in self._positions):
                self._counts(self.shards)  # read once here, not in every worker
            dataset = _Streams(self, [dict(p) for p in self._positions], self._next_worker)
            context = worker_context(self.tokenizer) if self.workers else None
            batches = iter(DataLoader(dataset, batch_size=None, num_workers=self.workers,
                                      multiprocessing_context=context))
            for images, tokens, meta in batches:
                worker = meta.pop("worker")
                self._positions[worker] = meta
                self._next_worker = (worker + 1) % self.workers_per_rank
                yield images, tokens
                if self._generation != generation:
                    break
            del batches  # stops its workers (their prefetched batches are replayed by the next DataLoader)

    @property
    def epoch(self) -> int:
        """The furthest epoch this rank's streams are in (at the last consumed batches)."""
        return max(p["epoch"] for p in self._positions)

    def add_shards(self, shards: list[str], epoch: int | None = None) -> list[str]:
        """Grow the data to `shards`, the new full list, which must contain every current shard (same
        normalised real path; ValueError naming the first missing one). The shards not in the current list
        are appended, in their order, and join the streams in epoch E = max(self.epoch, epoch) (module
        docstring); a live iterator takes them from its next batch. Call it with the same list on every DP rank;
        with order="sharded" and dp_world > 1 pass epoch = the max of `loader.epoch` over the DP ranks, so that
        they agree on E. Returns the added shards ([]: nothing to do, nothing changes)."""
        shards = [str(p) for p in shards]
        missing, _, added = _match([shard_identity(p) for p in self.shards], [shard_identity(p) for p in shards])
        if missing is not None:
            raise ValueError(f"add_shards: the new shard list lacks the current shard {self.shards[missing]} "
                             f"(it must contain every current shard)")
        new = [shards[i] for i in added]
        if new:
            self.shards += new
            self._added(len(new), self.epoch if epoch is None else max(self.epoch, epoch))
        return new

    def _added(self, count: int, epoch: int) -> None:
        """The last `count` shards are new and join in `epoch`: a phase of that epoch of every stream, mixed
        into the rest of it from the stream's position for the streams in it, from its start for those behind."""
        self._counts(self.shards)
        for worker, position in enumerate(self._positions):
            if position["epoch"] == epoch:
                phases, c = [*position["phases"], len(self.shards)], position["consumed"]
                shares = self._phase_shares(self.shards, epoch, phases, self.stream_rank * self.workers_per_rank
                                            + worker)
                position["phases"] = phases
                position["joins"] = [*position["joins"], [c, max(sum(shares[:-1]) - c, 0), shares[-1]]]
            else:
                position["later"] = [*position["later"], [epoch, len(self.shards)]]
        self._generation += 1
        log.info("%d shards added (now %d); they are mixed into the rest of epoch %d%s", count, len(self.shards),
                 epoch,
                 f", split by sample index modulo {self.streams} (fewer than the streams)"
                 if count < self.streams else "")

    @property
    def skipped(self) -> dict[str, int]:
        total: Counter = Counter()
        for position in self._positions:
            total.update(position["skipped"])
        return dict(total)

    def state_dict(self) -> dict:
        return {"version": 2, "dp_rank": self.stream_rank, "layout": self._layout(), "next_worker": self._next_worker,
                "positions": [_copy(p) for p in self._positions]}

    def load_state_dict(self, state: dict | list[dict]) -> None:
        states = state if isinstance(state, list) else [state]
        mine = [s for s in states if s["dp_rank"] == self.stream_rank]
        self._generation += 1  # a live iterator restarts at the loaded positions
        if mine and self._resume(mine[0], max(p["epoch"] for s in states for p in s["positions"])):
            return
        epoch = 1 + max(p["epoch"] for s in states for p in s["positions"])
        log.warning("data layout changed since the checkpoint (or no state for rank %d): cannot resume exactly; "
                    "all streams start at epoch %d", self.dp_rank, epoch)
        self._positions = self._fresh_positions(epoch)
        self._next_worker = 0

    def _resume(self, state: dict, epoch: int) -> bool:
        """Take the saved positions if the layout is the same up to added shards; those join in `epoch`."""
        if state.get("version", 1) == 1:
            if state["layout"] != self._layout_v1():
                return False
            positions = [{**p, "phases": [len(self.shards)], "joins": [], "later": []} for p in state["positions"]]
            added: list[int] = []
        else:
            saved, current = dict(state["layout"]), self._layout()
            saved_names, names = saved.pop("shards"), current.pop("shards")
            missing, old, added = _match(saved_names, names)
            if saved != current or missing is not None:
                return False
            self.shards = [self.shards[i] for i in old + added]  # the saved order, then the added shards
            # states saved before interleaving had no joins: their new phases came after the earlier ones
            positions = [{"joins": [[None, 0, 0]] * (len(p["phases"]) - 1), **p} for p in state["positions"]]
        self._positions = [_copy(p) for p in positions]
        self._next_worker = state["next_worker"]
        if added:
            self._added(len(added), epoch)
        return True


def _short_name(spec: str) -> str:
    """The last two path parts, so moving the data is harmless: of a URL's path (another host or port is
    harmless too), of a file: spec's path, of a pipe: command as written (pipe:cat DIR/x.tar names DIR/x.tar)."""
    kind = scheme(spec)
    path = local_path(spec) if kind == "file" else urlparse(spec).path if is_remote(spec) and kind != "pipe" else spec
    return "/".join(Path(path).parts[-2:])


def _copy(position: dict) -> dict:
    return {**position, "skipped": dict(position["skipped"]), "phases": list(position["phases"]),
            "joins": [list(x) for x in position["joins"]], "later": [list(x) for x in position["later"]]}


def _match(old: list[str], new: list[str]) -> tuple[int | None, list[int], list[int]]:
    """Match the keys of `old` to those of `new`, with multiplicity, in order: (index in old of the first key that
    new lacks or None, the index in new of each old key, the indices in new of the unmatched keys in order)."""
    pending: dict[str, deque] = defaultdict(deque)
    for i, key in enumerate(new):
        pending[key].append(i)
    matched = []
    for j, key in enumerate(old):
        if not pending[key]:
            return j, [], []
        matched.append(pending[key].popleft())
    taken = set(matched)
    return None, matched, [i for i in range(len(new)) if i not in taken]
