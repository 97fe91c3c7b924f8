"""`grow_checkpoint`: the one in-process entry point, used by the CLI (growth/grow.py) and by the trainer on
rank 0 after a save.

Order of work, so that a bad request writes nothing and the source is never modified:
1. every check (output absent, checkpoint readable, target a growth of the source, valid for the layout,
   EMA present when PIM reads it, tokenizer found) before any file is written;
2. a DeepSpeed checkpoint is converted to universal with ds_to_universal, inside a temporary folder beside
   the output (same filesystem, so the final rename is atomic);
3. the grown universal checkpoint is written into that folder, then renamed to `out`.
The output is `out/<tag>/` (tag of the source) with `out/latest` (what pretrain.checkpoint.resolve reads, so
`--resume out` works) and `out/latest_universal` (what DeepSpeed reads when no tag is given).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from pretrain import checkpoint as ckpt
from pretrain.arch import Architecture
from pretrain.parallel.layout import Layout

from . import universal
from .errors import GrowthError
from .live import pause_for_test
from .pim import PIM
from .plan import plan_growth
from .space import Moves, check_growth, target_architecture, validate_layout
from .writer import write_grown


def grow_checkpoint(source: str | Path, target: Moves | Architecture | str, out: str | Path,
                    layout: Layout = Layout(), pim: PIM = PIM(), reset_moments: bool = False,
                    tokenizer: str | Path | None = None, progress: bool = False, echo=print,
                    extra: dict | None = None) -> Path:
    """Grow the checkpoint at `source` into `target` (moves, their text, or an architecture) and write a
    universal checkpoint to the new folder `out`. Returns the grown tag folder. `extra` joins the growth
    history entry (the search's record, the data size). The PIM carries how T maps too (`split`, `depth_init`)
    and is recorded whole in the history entry."""
    out = Path(out)
    if out.exists():
        raise GrowthError(f"{out} already exists; growth never writes over a folder, choose a new --out")
    src_tag, states, client = _read_source(source)
    src_arch = Architecture.from_dict(client["architecture"], source=str(src_tag))
    dst_arch, move, notes, plan = prepare(src_arch, target, layout, pim)
    if pim.inherit and pim.source == "ema" and not (client.get("ema") or {}).get("shadow"):
        raise GrowthError(f"{src_tag}: PIM source 'ema' but the checkpoint holds no EMA weights; use 'last'")
    tok = _tokenizer(src_tag, tokenizer, client)
    for note in notes:
        echo(f"warning: {note}")

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        uni = src_tag
        if not ckpt.is_universal(src_tag):
            echo(f"converting {src_tag} to universal (ds_to_universal)")
            uni = universal.to_universal(src_tag, work / "source" / src_tag.name)
            pause_for_test("converted", uni, _rank())
        new_tag = work / "out" / src_tag.name
        new_tag.mkdir(parents=True)
        entry = history_entry(move, src_arch, dst_arch, pim, reset_moments, client["step"], str(src_tag.resolve()),
                              layout, notes, extra)
        write_grown(uni, new_tag, dst_arch, plan, states, grown_client(client, dst_arch, layout, entry), pim,
                    reset_moments, progress)
        shutil.copyfile(tok, new_tag / "tokenizer.model")
        for name in ("latest", "latest_universal"):
            (work / "out" / name).write_text(src_tag.name)
        pause_for_test("written", new_tag, _rank())
        if out.exists():
            raise GrowthError(f"{out} appeared while growing; the grown checkpoint is not written over it")
        os.rename(work / "out", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from .summary import table
    echo(f"grew {src_tag} ({move or 'no change'}) -> {out / src_tag.name}\n{table(src_arch, dst_arch)}")
    return out / src_tag.name


def clear_stale_work(out: str | Path) -> list[Path]:
    """Remove the temporary folders `.<out name>.tmp-*` beside `out` that growths into `out` (this module's and
    growth/live.py's) left when they were killed before their rename. Nothing reads them; a run's driver calls
    this on rank 0 before it grows into `out` again, so that a killed growth does not leave a model-sized folder
    behind for good. Returns what it removed."""
    out = Path(out)
    stale = sorted(out.parent.glob(f".{out.name}.tmp-*")) if out.parent.is_dir() else []
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def _rank() -> int:
    """The launcher's rank of this process (0 outside a launch): who prints a test pause's marker."""
    return int(os.environ.get("RANK", "0"))


def _read_source(source: str | Path) -> tuple[Path, dict, dict]:
    """(tag folder, model-states file, client state), read once (the file holds the module and the EMA)."""
    src_tag = universal.find_checkpoint(source)
    states = universal.load(src_tag / ckpt.MODEL_STATES)
    client = states.get(ckpt.CLIENT_KEY) if isinstance(states, dict) else None
    if not isinstance(client, dict) or "architecture" not in client:
        raise GrowthError(f"{src_tag / ckpt.MODEL_STATES}: no '{ckpt.CLIENT_KEY}' client state; "
                          f"not a GrowCLIP checkpoint")
    return src_tag, states, client


def prepare(src: Architecture, target: Moves | Architecture | str, layout: Layout, pim: PIM
            ) -> tuple[Architecture, str, list[str], dict]:
    """(target architecture, the move's text, notes on approximate parts, the plan: a TensorMap per parameter) of
    a growth of `src`, after its checks: a growth (nothing shrinks), valid at `layout` (the ZeRO stage is the
    resumed run's choice; its trainer checks it). Shared by the saved path and live growth (growth/live.py)."""
    dst, move = target_architecture(src, target)
    notes = check_growth(src, dst)
    validate_layout(dst, layout)
    return dst, move, notes, plan_growth(src, dst, split=pim.split, depth_init=pim.depth_init)


def history_entry(move: str, src: Architecture, dst: Architecture, pim: PIM, reset_moments: bool, step: int,
                  source: str, layout: Layout, notes: list[str], extra: dict | None) -> dict:
    """The growth history entry a grown checkpoint appends (`extra`: the search's record, the data size)."""
    return {"move": move, "from": src.to_dict(), "to": dst.to_dict(), "pim": pim.to_dict(),
            "reset_moments": reset_moments or not pim.inherit, "source_step": step, "source": source,
            "layout": {"tp": layout.tp, "pp": layout.pp}, "approximate": notes, **(extra or {})}


def grown_client(client: dict, dst: Architecture, layout: Layout, entry: dict) -> dict:
    """The source's client state (step, data position, tokenizer hash, EMA to be grown) at the new
    architecture and layout, with the growth appended to the history."""
    grown = {**client, "architecture": dst.to_dict(),
             "layout": {**(client.get("layout") or {}), "tp": layout.tp, "pp": layout.pp},
             "growth_history": [*client.get("growth_history", []), entry]}
    if isinstance(client.get("run_config"), dict):
        grown["run_config"] = {**client["run_config"], "model": dst.to_dict()}
    return grown


def _tokenizer(tag_dir: Path, given: str | Path | None, client: dict) -> Path:
    """The tokenizer to copy: the checkpoint's own, or `given` (ds_to_universal drops it), hash-checked."""
    path = Path(given) if given else tag_dir / "tokenizer.model"
    if not path.is_file():
        raise GrowthError(f"{path}: no tokenizer.model; pass the run's tokenizer with --tokenizer")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != client.get("tokenizer_sha256"):
        raise GrowthError(f"{path}: sha256 {digest[:12]} differs from the checkpoint's tokenizer "
                          f"({str(client.get('tokenizer_sha256'))[:12]})")
    return path
