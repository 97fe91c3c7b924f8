"""`python -m growth.timeline RUN [--out PNG]`: the growth timeline of a run as one PNG: the training loss (top) and
the learning rate (bottom) against samples seen (left) and against cumulative training FLOPs (right).

- Loss and learning rate: metrics.jsonl `loss` and `lr`, one point per step (a step logged twice, after a restart,
  counts once: the last record).
- Training FLOPs: 3 x forward FLOPs per sample x samples, step by step at the architecture of that step
  (metrics.jsonl `gflops`, `samples`). The compute of each growth search is added after its step, so the curve
  shows what deciding to grow cost, not only what training cost: the search record's `search_gflop` (its summary
  line), or for an older record without one, every proxy-trained row's K steps of proxy_batch samples (3x
  forward) plus its held-out forward passes.
- Searches: every OUT/growth/search-step<N>.jsonl is marked after step N. A search that grew the model is a red
  dashed line where the architecture changed, labelled with its move and the parameter count after it; one
  whose decision was to keep the architecture (`"kept": true` in its summary line, or no winner) is a grey dotted
  line labelled "kept: no growth". Each label shows the search's share of compute, the summary line's `share`
  (growth/auto.py: search_gflop over the run's training compute); records without a summary line show none.
  A growth without a search record (a written move of `growth.at_steps`) is labelled with the move from the
  grown checkpoint's growth history.
- Data stages: the background is shaded per data size |D| (metrics.jsonl `data_samples`), labelled in samples.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics (is {run} a run folder?)")
    by_step = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            by_step[r["step"]] = r
    rows = [by_step[s] for s in sorted(by_step)]
    missing = [k for k in ("samples", "gflops", "loss") if rows and k not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{path}: {'no records' if not rows else f'records lack {missing}'}; the timeline needs "
                         f"a run written by this version of the trainer")
    return rows


def estimated_gflop(rows: list[dict]) -> float:
    """A search's compute from its proxy-trained rows (records written before the summary line existed)."""
    from .search import cost_gflop
    return sum(cost_gflop({"streams": 1, **r}) for r in rows)


def read_search(path: Path) -> dict | None:
    """One search record -> {"step", "winner": move or None, "kept", "gflop": its compute in GFLOPs, "share": of
    the run's compute (None without a summary line), "g", "summary": whether the record has its summary line,
    "trained": proxy-trained rows}. None for a file that names no step."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    summary = next((r for r in rows if r.get("summary")), None)
    trained = [r for r in rows if not r.get("rejected") and not r.get("summary")]
    named = re.fullmatch(r"search-step(\d+)\.jsonl", path.name)
    step = (summary or (trained[0] if trained else {})).get("step", int(named[1]) if named else None)
    if step is None:
        return None
    if summary is not None:
        winner = summary.get("winner") or None
        kept = bool(summary.get("kept", winner is None))
        gflop = summary.get("search_gflop")
        gflop = estimated_gflop(trained) if gflop is None else float(gflop)
    else:  # the reference row wins a "no growth" decision: its move is ""
        winner = next((r["move"] for r in trained if r.get("winner")), None) or None
        kept, gflop = winner is None, estimated_gflop(trained)
    return {"step": int(step), "winner": winner, "kept": kept, "gflop": gflop,
            "share": summary.get("share") if summary else None,
            "g": (summary or {}).get("g", trained[0].get("g") if trained else None),
            "summary": summary is not None, "trained": len(trained)}


def searches(run: Path) -> dict[int, dict]:
    """step -> the search after that step (read_search), from OUT/growth/search-step<N>.jsonl."""
    out = {}
    for path in sorted((run / "growth").glob("search-step*.jsonl")):
        s = read_search(path)
        if s is not None:
            out[s["step"]] = s
    return out


def percent(s: dict | None) -> str:
    """A search's share of the compute as text ("4.1%"), "" when its record has none."""
    if not s or s.get("share") is None:
        return ""
    pct = 100 * s["share"]
    return f"{pct:.1f}%" if pct >= 1 else f"{pct:.2f}%"


def after(rows: list[dict], step: int) -> int:
    """Index of the first row after `step` (len(rows) when none)."""
    return next((i for i, r in enumerate(rows) if r["step"] > step), len(rows))


def written_move(run: Path, step: int) -> str:
    """The move of a written growth, from the growth history of OUT/grown/step<N>."""
    from pretrain import checkpoint as ckpt
    folder = run / "grown" / f"step{step}"
    try:
        return ckpt.read_client_state(ckpt.resume_dir(folder, str(folder)))["growth_history"][-1]["move"]
    except (ckpt.CheckpointError, KeyError, IndexError):
        return "written move"


def marks(rows: list[dict], search: dict[int, dict], run: Path | None = None) -> list[dict]:
    """Every growth and every search, in order: {"index": the first row after it, "step", "kind": "growth" or
    "kept", "move", "share", "label"}. A growth is where the architecture changed between two rows; a search
    record at that step names its move. A search with no architecture change after it is "kept"."""
    out, matched = [], set()
    for i in range(1, len(rows)):
        if rows[i]["gflops"] != rows[i - 1]["gflops"] or rows[i].get("params") != rows[i - 1].get("params"):
            step = rows[i - 1]["step"]
            s = search.get(step)
            matched.add(step)
            move = (s["winner"] or "no candidate") if s else written_move(run, step) if run else "written move"
            head = f"step {step}: {move}" + (f" (search, g={s['g']:.2f})" if s and s.get("g") else "")
            text = f"{rows[i].get('params', 0) / 1e6:.2f}M params" + (
                f"; search {percent(s)} of compute" if percent(s) else "")
            out.append({"index": i, "step": step, "kind": "growth", "move": move,
                        "share": s.get("share") if s else None, "label": f"{head}\n{text}"})
    for step, s in search.items():
        if step in matched:
            continue
        head = f"step {step}: " + ("kept: no growth" if s["kept"] else str(s["winner"]))
        head += f" (search, g={s['g']:.2f})" if s.get("g") else ""
        out.append({"index": after(rows, step), "step": step, "kind": "kept" if s["kept"] else "growth",
                    "move": s["winner"], "share": s.get("share"),
                    "label": head + (f"\nsearch {percent(s)} of compute" if percent(s) else "")})
    return sorted(out, key=lambda m: (m["index"], m["step"]))


def growths(rows: list[dict], search: dict[int, dict], run: Path | None = None) -> list[tuple[int, str]]:
    """(index into rows of the first step after a growth, label)."""
    return [(m["index"], m["label"]) for m in marks(rows, search, run) if m["kind"] == "growth"]


def curves(rows: list[dict], search: dict[int, dict], run: Path | None = None) -> dict[str, dict]:
    """Per panel ("samples", "flops"): the points (x, loss, lr), each growth's and each kept search's x and label,
    each data stage's x span and size, and on the FLOPs axis each search's (start, end, text). There a search is a
    flat stretch: its compute passes while the loss and the learning rate stay where they were."""
    found = marks(rows, search, run)
    cost = {}
    for step, s in search.items():  # the search after step N is paid before the first row after it
        if s["gflop"]:
            cost.setdefault(after(rows, step), []).append(s)
    out = {}
    for axis in ("samples", "flops"):
        xs, ys, lrs, ends, stages, spans, total, prev = [], [], [], [], [], [], 0.0, 0
        for i, r in enumerate(rows):
            edge = xs[-1] if xs else 0.0  # where a growth, a search or a new stage begins
            if axis == "flops" and ys:
                for s in cost.get(i, []):
                    spans.append((total, total + s["gflop"] * 1e9, f"search {percent(s)}".strip()))
                    total += s["gflop"] * 1e9
                    xs.append(total)
                    ys.append(ys[-1])
                    lrs.append(lrs[-1])
            total += 3 * r["gflops"] * 1e9 * (r["samples"] - prev)
            prev = r["samples"]
            x = r["samples"] if axis == "samples" else total
            if not stages or stages[-1][2] != r.get("data_samples"):
                stages.append([edge, x, r.get("data_samples")])
            stages[-1][1] = x
            xs.append(x)
            ys.append(r["loss"])
            lrs.append(r.get("lr"))
            ends.append(x)

        def where(index: int) -> float:  # a mark before row `index` stands at the end of the row before it
            return ends[index - 1] if index > 0 else 0.0

        out[axis] = {"x": xs, "loss": ys, "lr": lrs, "stages": stages, "searches": spans,
                     "growths": [(where(m["index"]), m["label"]) for m in found if m["kind"] == "growth"],
                     "kept": [(where(m["index"]), m["label"]) for m in found if m["kind"] == "kept"]}
    return out


def plot(run: Path, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = curves(read_metrics(run), searches(run), run)
    fig, axes = plt.subplots(2, 2, figsize=(13, 6.6), sharex="col", gridspec_kw={"height_ratios": [3, 1.1]})
    labels = {"samples": "samples seen", "flops": "cumulative training FLOPs (searches included)"}
    for col, (axis, c) in enumerate(panels.items()):
        top, bottom = axes[0, col], axes[1, col]
        top.plot(c["x"], c["loss"], lw=1.0, color="tab:blue")
        lr = [(x, v) for x, v in zip(c["x"], c["lr"]) if v is not None]
        if lr:
            bottom.plot(*zip(*lr), lw=1.0, color="tab:green")
        for ax in (top, bottom):
            for k, (lo, hi, size) in enumerate(c["stages"]):
                ax.axvspan(lo, hi, color="grey", alpha=0.07 + 0.08 * (k % 2), lw=0)
            for lo, hi, _ in c["searches"]:
                ax.axvspan(lo, hi, color="tab:red", alpha=0.08, lw=0)
            for x, _ in c["growths"]:
                ax.axvline(x, color="tab:red", lw=0.8, ls="--")
            for x, _ in c["kept"]:
                ax.axvline(x, color="dimgrey", lw=0.9, ls=":")
            ax.grid(alpha=0.3)
        for k, (lo, hi, size) in enumerate(c["stages"]):  # in the lr panel, a line each: close stages do not overlap
            bottom.text(lo, 0.6 - 0.17 * k, f" stage {k + 1}: |D|={size or 0:,}", va="top", fontsize=7,
                        color="dimgrey", transform=bottom.get_xaxis_transform())
        for lo, hi, text in c["searches"]:
            top.text((lo + hi) / 2, 0.02, text, ha="center", fontsize=7, color="tab:red",
                     transform=top.get_xaxis_transform())
        found = sorted([(x, t, "tab:red") for x, t in c["growths"]] + [(x, t, "dimgrey") for x, t in c["kept"]])
        lo, hi = min(c["x"]), max(c["x"])
        for k, (x, text, color) in enumerate(found):  # labels at alternating heights, so neighbours do not collide
            right = hi > lo and (x - lo) / (hi - lo) > 0.6  # late marks are labelled to the left of their line
            top.text(x, 0.93 - 0.13 * (k % 2), text.replace("\n", " \n") + " " if right else " " + text.replace(
                "\n", "\n "), va="top", ha="right" if right else "left", fontsize=7, color=color,
                     multialignment="right" if right else "left", transform=top.get_xaxis_transform())
        top.set_ylabel("training loss")
        bottom.set_ylabel("learning rate")
        bottom.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        bottom.set_xlabel(labels[axis])
    fig.suptitle(f"growth timeline: {run}  (red dashed: growth; grey dotted: search kept the architecture)",
                 fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m growth.timeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder (holds metrics.jsonl)")
    p.add_argument("--out", help="PNG path (default RUN/timeline.png)")
    args = p.parse_args(argv)
    run = Path(args.run)
    try:
        path = plot(run, Path(args.out) if args.out else run / "timeline.png")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"timeline: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
