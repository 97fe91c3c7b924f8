"""The growth kinds of tests/faults.py (issue 20, item 1): runs that grow, killed inside the growth or the search.

Each kind is the tiny 2-rank run of tests/faults.py (SMALL_MODEL, fp32, ZeRO --zero, 2 x 16 pairs a step) for 6
steps with a save every 2, that grows once, after step 3:
  - growth-live:  a written growth (growth.at_steps=[3]) from the running engine (growth/live.py): no save at 3;
  - growth-saved: the same growth with growth.live=false: the save of step 3, ds_to_universal, then
    grow_checkpoint (growth/hook.py) on rank 0;
  - search:       data.stages (4 of the 8 tiny shards, then all 8) with data.stage_steps=[3] and growth.mode=auto:
    the save of step 3, its conversion, a tiny search (2 candidates around 2x FLOPs and "no growth", 2 proxy steps
    of 16 pairs on each of 2 streams, 2 held-out batches; growth.always_grow so that a winner is grown), then
    grow_checkpoint of the winner.
Phases (growth/live.py `pause_for_test`, GROWCLIP_TEST_PAUSE_IN_GROWTH=PHASE:SECONDS; every rank that reaches the
phase sleeps, rank 0 prints the marker): `search-train` (a rank's first candidate proxy-trained), `search-gather`
(every candidate trained, the scores not yet gathered), `converted` (ds_to_universal done), `written` (the grown
checkpoint written into its temporary folder, not yet renamed to OUT/grown/step3), `restart` (renamed, the old
engine closed, the new one not yet built); and `time`: after step 3 is logged plus a random part of the time the
reference took from step 3 to step 4 (the save, conversion, search, growth and restart, in whatever part the
kill lands).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PAUSE_ENV = "GROWCLIP_TEST_PAUSE_IN_GROWTH"  # growth/live.py's (not imported: the tool runs without torch loaded)
PAUSE_MARKER = "GROWCLIP_TEST_PAUSE_IN_GROWTH:"
RESTART = b"===== faults: restart with --resume latest ====="
STEPS, SAVE_EVERY, AT = 6, 2, 3
MOVE = "vision.layers+=1,text.width*=2"


@dataclass(frozen=True)
class Kind:
    phases: tuple[str, ...]
    overrides: tuple[str, ...]
    stages: bool = False  # data.stages over the tiny shards (the search)


WRITTEN = (f"growth.at_steps=[{AT}]", f'growth.moves=["{MOVE}"]', "growth.pim_m=0.9", "growth.symmetry_noise=0.05")
KINDS = {
    "growth-live": Kind(("written", "restart", "time"), WRITTEN),
    "growth-saved": Kind(("converted", "written", "restart", "time"), (*WRITTEN, "growth.live=false")),
    "search": Kind(("search-train", "search-gather", "converted", "written", "restart", "time"),
                   ('data.shards=""', f"data.stage_steps=[{AT}]", "growth.mode=auto", "growth.candidates=2",
                    "growth.proxy_steps=2", "growth.proxy_batch=16", "growth.heldout_batches=2",
                    "growth.target_ratio=2", "growth.always_grow=true", "growth.rewarm_steps=1"), stages=True),
}


def overrides(kind: str, data: dict) -> list[str]:
    k = KINDS[kind]
    stages = []
    if k.stages:
        shards = data["shards"]
        stages = [f"data.stages={json.dumps([f'{shards}/shard-{{000000..000003}}.tar', shards])}"]
    return [*k.overrides, *stages]


def phase_of(kind: str, i: int, kinds: list[str]) -> str:
    """Trial i's phase: the kind's phases in turn over that kind's trials, so that a few trials cover them all."""
    phases = KINDS[kind].phases
    return phases[(i // len(kinds)) % len(phases)]


def growth_state(out: Path) -> dict:
    """What a run folder says of its growth: the final checkpoint's growth history (source steps and moves), the
    search's winner and the grown folders in place."""
    import contextlib
    import io

    from pretrain import checkpoint as ckpt
    with contextlib.redirect_stdout(io.StringIO()):
        history = ckpt.read_client_state(out / "checkpoints" / f"step{STEPS:08d}").get("growth_history", [])
    record = out / "growth" / f"search-step{AT}.jsonl"
    summary = None
    if record.is_file():
        summary = next((json.loads(line) for line in record.read_text().splitlines()
                        if json.loads(line).get("summary")), None)
    return {"history": [h["source_step"] for h in history], "moves": [h["move"] for h in history],
            "search_winner": summary["winner"] if summary else None,
            "grown": sorted(p.name for p in (out / "grown").iterdir()
                            if not p.name.startswith(".")) if (out / "grown").is_dir() else []}


def complete(tag: Path) -> bool:
    """A checkpoint tag folder as a finished write leaves it: the model-states file, and the zero/ folder for a
    universal (grown) one."""
    from pretrain import checkpoint as ckpt
    return (tag / ckpt.MODEL_STATES).is_file() and (".tmp" not in str(tag)) and (
        "grown" not in tag.parts or (tag / "zero").is_dir())


def after_kill(out: Path) -> dict:
    """The folders a kill left: temporary ones (a save's `<tag>.tmp`, a growth's `.step<N>.tmp-*`, the search's
    conversion `growth/universal-step<N>`) and any folder under a final name that is not complete (a bug)."""
    left = []
    for pattern in ("checkpoints/*.tmp", "grown/.*", "growth/universal-step*"):
        left += [str(p.relative_to(out)) for p in out.glob(pattern)]
    named = [p / (p / "latest").read_text().strip() for p in out.glob("grown/step*") if (p / "latest").is_file()]
    named += [p for p in out.glob("checkpoints/step*") if not p.name.endswith(".tmp")]
    broken = [str(p.relative_to(out)) for p in out.glob("grown/step*") if not (p / "latest").is_file()]
    broken += [str(p.relative_to(out)) for p in named if not complete(p)]
    return {"left": sorted(left), "incomplete": sorted(broken)}


def restart_facts(log: Path) -> dict:
    """From the restart's part of the log: the folders it resumed from (`trainer: resumed from X at step S`, each
    trainer start), the step of the first, and whether it grew or searched again."""
    text = log.read_bytes().split(RESTART, 1)[-1].decode(errors="replace")
    resumed = []
    for line in text.splitlines():
        if line.startswith("trainer: resumed from "):
            folder, _, step = line[len("trainer: resumed from "):].rpartition(" at step ")
            resumed.append((folder, int(step)))
    return {"resumed": resumed, "resumed_from": resumed[0][1] if resumed else 0,
            "growth_redone": any(line.startswith("grew ") for line in text.splitlines()),
            "search_redone": "[search] g=" in text}


def check(r: dict, out: Path, log: Path, ref: dict) -> None:
    """The growth conditions, into the trial's record r: the growth taken once (the final history's source steps
    and the grown folders are the reference's), the same winner (moves, and the search record's winner), no
    half-written folder taken (every folder the restart resumed from is complete under its final name) or left
    under a final name."""
    got = growth_state(out)
    r.update(history=got["history"], moves=got["moves"], search_winner=got["search_winner"],
             left_after_restart=after_kill(out)["left"])  # the restart clears what the kill left (none expected)
    r["growth_once"] = got["history"] == ref["history"] == [AT] and got["grown"] == ref["grown"]
    r["same_winner"] = got["moves"] == ref["moves"] and got["search_winner"] == ref["search_winner"]
    taken = [folder for folder, _ in restart_facts(log)["resumed"]]
    r["no_partial"] = not r["incomplete"] and all(complete(Path(f)) for f in taken)
    problems = [name for name in ("growth_once", "same_winner", "no_partial") if not r[name]]
    if problems:
        r["error"] = (r["error"] or "") + (f" {', '.join(problems)} failed: history {got['history']} moves "
                                           f"{got['moves']} winner {got['search_winner']} grown {got['grown']} "
                                           f"(reference {ref}); resumed from {taken}; incomplete {r['incomplete']}")
