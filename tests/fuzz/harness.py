"""One fuzz case: run it in-process under a time bound, then judge what it did.

A case is made by a kind's `make(rng, root, fx)` inside its own folder `root`; its run writes only to
`root/out` (the run's out_dir, eval's --out). Two ways a case runs:
- `Cli`: a product entry point `main(argv)` (pretrain.main, eval). Training stops where DeepSpeed would start
  (`pretrain.trainer.init_distributed` is replaced by a stub that raises `Reached`): everything checked before
  that point has passed, and the case counts as "accepted".
- `Loader`: a TrainLoader over the case's shards, a few batches in-process; bad data must become counted skips.

Verdicts: "ok" or a finding ("traceback", "bad exit", "not one line", "unnamed", "accepted bad input", "no skip
counted", "timeout", "wrote outside out_dir", "changed input"). `expect` says what a case must end in: "error"
(exit 2, one `error:` line naming one of `names`), "error_or_accept" (either), "skip" (the loader counts skips)
or "skip_or_clean".
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HASH_BELOW = 1 << 20  # files smaller than this are hashed in the snapshots; larger ones compared by size and mtime


class Reached(Exception):
    """Raised where DeepSpeed would start: the input passed every check made before it."""


class CaseTimeout(BaseException):  # not an Exception: the product's `except Exception` must not swallow it
    pass


@dataclass
class Cli:
    main: Callable[[list[str]], int]
    argv: list[str]
    env: dict = field(default_factory=dict)


@dataclass
class Loader:
    shards: list[str]
    tokenizer: str
    batches: int = 20
    batch_size: int = 8
    max_pixels: int = 50_000_000


@dataclass
class Case:
    kind: str
    what: str               # the mutation, in words
    run: Cli | Loader
    expect: str             # error | error_or_accept | skip | skip_or_clean
    names: list[str] = field(default_factory=list)  # an error line must contain one of these (key or file)
    watch: list[Path] = field(default_factory=list)  # inputs outside root that must not change (the fixtures)


@dataclass
class Result:
    outcome: str            # error | accepted | ran | skips | clean | exception | timeout
    verdict: str            # ok, or the finding
    detail: str = ""
    seconds: float = 0.0


def snapshot(paths: list[Path], skip: Path | None = None) -> dict:
    """(path -> (size, mtime, sha1 of small files)) of every file under `paths`, `skip` left out."""
    out = {}
    for top in paths:
        for dirpath, dirnames, filenames in os.walk(top):
            if skip is not None and Path(dirpath) == skip.parent and skip.name in dirnames:
                dirnames.remove(skip.name)
            out[dirpath] = ("dir",)
            for name in filenames:
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                digest = ""
                if st.st_size < HASH_BELOW and os.path.isfile(p) and not os.path.islink(p):
                    with open(p, "rb") as f:
                        digest = hashlib.sha1(f.read()).hexdigest()
                out[p] = (st.st_size, st.st_mtime_ns, digest)
    return out


def _diff(before: dict, after: dict) -> str:
    added = sorted(set(after) - set(before))
    gone = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    parts = [f"{what} {paths[0]}" + (f" (+{len(paths) - 1})" if len(paths) > 1 else "")
             for what, paths in (("new", added), ("removed", gone), ("changed", changed)) if paths]
    return "; ".join(parts)


@contextlib.contextmanager
def time_limit(seconds: float):
    def expire(signum, frame):
        raise CaseTimeout()
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def env(values: dict):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_cli(run: Cli) -> tuple[str, int | None, str, str]:
    """(outcome, exit status, stdout, stderr)."""
    import pretrain.trainer as trainer

    def reached():
        raise Reached()
    out, err = io.StringIO(), io.StringIO()
    saved = trainer.init_distributed
    trainer.init_distributed = reached
    try:
        with env({"WORLD_SIZE": "2", **run.env}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = run.main(run.argv)
            except SystemExit as e:  # argparse: status 2 and its usage line
                rc = e.code if isinstance(e.code, int) else 1
            except Reached:
                return "accepted", None, out.getvalue(), err.getvalue()
    except CaseTimeout:
        raise
    except BaseException:  # noqa: BLE001 - anything that escapes is what the user would see as a traceback
        return "exception", None, out.getvalue(), err.getvalue() + traceback.format_exc()
    finally:
        trainer.init_distributed = saved
    return ("error" if rc == 2 else "ran" if rc == 0 else f"exit {rc}"), rc, out.getvalue(), err.getvalue()


def judge_cli(case: Case, outcome: str, stderr: str) -> tuple[str, str]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or ": error:" in line]
    first = errors[0] if errors else (lines[-1] if lines else "")
    if outcome == "exception" or "Traceback" in stderr:
        return "traceback", stderr.strip().splitlines()[-1][:300] if stderr.strip() else ""
    if outcome == "accepted":
        return ("ok", "") if case.expect == "error_or_accept" else ("accepted bad input", "")
    if outcome == "ran":
        return ("ok", "") if case.expect == "error_or_accept" else ("accepted bad input", "exit 0")
    if outcome != "error":
        return "bad exit", f"{outcome}: {first[:300]}"
    if len(errors) != 1 or lines[-1] != errors[0]:  # one error line, and nothing of it spills onto more lines
        return "not one line", " | ".join(lines[lines.index(first):])[:300] if first in lines else stderr[-300:]
    if case.names and not any(n in first for n in case.names):
        return "unnamed", first[:300]
    return "ok", first[:300]


def run_loader(run: Loader) -> tuple[str, str, str]:
    from pretrain.data.manifest import shard_sample_counts
    from pretrain.data.pipeline import TrainLoader
    from pretrain.data.tokenizer import load_tokenizer
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            counts = shard_sample_counts(run.shards)
            loader = TrainLoader(run.shards, load_tokenizer(run.tokenizer, 16), 32, run.batch_size, 0, 1,
                                 workers=0, shuffle_buffer=16, max_pixels=run.max_pixels)
            for i, (images, tokens) in zip(range(run.batches), loader):
                if tuple(images.shape) != (run.batch_size, 3, 32, 32) or tuple(tokens.shape) != (run.batch_size, 16):
                    return "exception", f"batch {i}: shapes {tuple(images.shape)} {tuple(tokens.shape)}", ""
        except CaseTimeout:
            raise
        except BaseException as e:  # noqa: BLE001
            outcome = "error" if e.__class__.__name__ == "NoUsableData" else "exception"  # main.py: one line, 2
            return outcome, f"{e.__class__.__name__}: {str(e)[:300]}", traceback.format_exc()
    skipped = loader.skipped
    detail = f"counts {counts}, skipped {skipped}"
    return ("skips" if skipped else "clean"), detail, err.getvalue()


def run_case(case: Case, root: Path, timeout: float) -> Result:
    out_dir = root / "out"
    watched = [root, *case.watch]
    before = snapshot(watched, skip=out_dir)
    start = time.monotonic()
    try:
        with time_limit(timeout):
            if isinstance(case.run, Cli):
                outcome, _, _, stderr = run_cli(case.run)
                verdict, detail = judge_cli(case, outcome, stderr)
            else:
                outcome, detail, _ = run_loader(case.run)
                verdict = ("ok" if outcome == "skips" or (outcome == "clean" and case.expect == "skip_or_clean")
                           or (outcome == "error" and case.expect == "error")
                           else "no skip counted" if outcome == "clean" else "traceback")
    except CaseTimeout:
        outcome, verdict, detail = "timeout", "timeout", f"still running after {timeout:.0f} s"
    seconds = time.monotonic() - start
    changes = _diff(before, snapshot(watched, skip=out_dir))
    if changes and verdict == "ok":
        verdict = "wrote outside out_dir" if "new" in changes else "changed input"
        detail = changes
    return Result(outcome, verdict, detail, round(seconds, 2))
