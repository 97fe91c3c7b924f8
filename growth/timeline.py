"""`python -m growth.timeline RUN [--out PNG]`: the growth timeline of a run as one PNG with two panels, the
training loss against samples seen and against cumulative training FLOPs.

- Loss: metrics.jsonl, one point per step (a step logged twice, after a restart, counts once: the last record).
- Training FLOPs: 3 x forward FLOPs per sample x samples, step by step at the architecture of that step
  (metrics.jsonl `gflops`, `samples`). The FLOPs of each growth search (every proxy-trained candidate's K
  steps of proxy_batch samples, 3x forward, plus its held-out forward passes) are added at the growth step, so
  the curve shows what growing cost, not only what training cost.
- Growths: a vertical line where the architecture changed, labelled with its move (the search winner for an
  automatic growth, from OUT/growth/search-step<N>.jsonl) and the parameter count after it.
- Data stages: the background is shaded per data size |D| (metrics.jsonl `data_samples`), labelled in samples.
"""
from __future__ import annotations

import argparse
import json
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


def searches(run: Path) -> dict[int, dict]:
    """step -> {"winner": move or None, "gflop": search cost in GFLOPs, "g": ratio} from the search records."""
    out = {}
    for path in sorted((run / "growth").glob("search-step*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        trained = [r for r in rows if not r.get("rejected")]
        if not trained:
            continue
        step = trained[0]["step"]
        winner = next((r["move"] for r in trained if r.get("winner")), None)
        cost = 0.0
        for r in trained:  # proxy training (3x forward) and the held-out forward passes
            cost += r["gflops"] * r["proxy_batch"] * (3 * r["proxy_steps"] + r["heldout_batches"])
        out[step] = {"winner": winner, "gflop": cost, "g": trained[0].get("g")}
    return out


def curves(rows: list[dict], search: dict[int, dict], run: Path | None = None) -> dict[str, dict]:
    """Per panel: the (x, loss) points, each growth's x and label, and each data stage's x span and size. On the
    FLOPs axis a search is a flat stretch: its compute passes while the loss stays where it was."""
    marks = dict(growths(rows, search, run))
    out = {}
    for axis in ("samples", "flops"):
        xs, ys, lines, stages, spans, total, prev = [], [], [], [], [], 0.0, 0
        for i, r in enumerate(rows):
            edge = xs[-1] if xs else 0.0  # where a growth or a new stage begins
            if i in marks:
                lines.append((edge, marks[i]))
            cost = search.get(r["step"] - 1, {}).get("gflop", 0) * 1e9
            if axis == "flops" and cost and ys:
                total += cost
                spans.append((edge, total))
                xs.append(total)
                ys.append(ys[-1])
            total += 3 * r["gflops"] * 1e9 * (r["samples"] - prev)
            prev = r["samples"]
            x = r["samples"] if axis == "samples" else total
            if not stages or stages[-1][2] != r.get("data_samples"):
                stages.append([edge, x, r.get("data_samples")])
            stages[-1][1] = x
            xs.append(x)
            ys.append(r["loss"])
        out[axis] = {"x": xs, "loss": ys, "growths": lines, "stages": stages, "searches": spans}
    return out


def written_move(run: Path, step: int) -> str:
    """The move of a written growth, from the growth history of OUT/grown/step<N>."""
    from pretrain import checkpoint as ckpt
    folder = run / "grown" / f"step{step}"
    try:
        return ckpt.read_client_state(ckpt.resume_dir(folder, str(folder)))["growth_history"][-1]["move"]
    except (ckpt.CheckpointError, KeyError, IndexError):
        return "written move"


def growths(rows: list[dict], search: dict[int, dict], run: Path | None = None) -> list[tuple[int, str]]:
    """(index into rows of the first step after a growth, label)."""
    out = []
    for i in range(1, len(rows)):
        if rows[i]["gflops"] != rows[i - 1]["gflops"] or rows[i].get("params") != rows[i - 1].get("params"):
            step = rows[i - 1]["step"]
            s = search.get(step)
            move = (s["winner"] or "no candidate") if s else written_move(run, step) if run else "written move"
            label = f"step {step}: {move}" + (f" (search, g={s['g']:.2f})" if s and s.get("g") else "")
            out.append((i, f"{label}\n{rows[i].get('params', 0) / 1e6:.2f}M params"))
    return out


def plot(run: Path, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = curves(read_metrics(run), searches(run), run)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    labels = {"samples": "samples seen", "flops": "cumulative training FLOPs (searches included)"}
    for ax, (axis, c) in zip(axes, panels.items()):
        ax.plot(c["x"], c["loss"], lw=1.0, color="tab:blue")
        for k, (lo, hi, size) in enumerate(c["stages"]):
            ax.axvspan(lo, hi, color="grey", alpha=0.07 + 0.08 * (k % 2), lw=0)
            ax.text(lo, 1.0, f" stage {k + 1}: |D|={size or 0:,}", va="top", fontsize=7, color="dimgrey",
                    transform=ax.get_xaxis_transform())
        for lo, hi in c["searches"]:
            ax.axvspan(lo, hi, color="tab:red", alpha=0.08, lw=0)
            ax.text((lo + hi) / 2, 0.02, "search", ha="center", fontsize=7, color="tab:red",
                    transform=ax.get_xaxis_transform())
        for k, (x, text) in enumerate(c["growths"]):  # labels at alternating heights, so neighbours do not collide
            ax.axvline(x, color="tab:red", lw=0.8, ls="--")
            ax.text(x, 0.93 - 0.1 * (k % 2), " " + text, va="top", fontsize=7, color="tab:red",
                    transform=ax.get_xaxis_transform())
        ax.set_xlabel(labels[axis])
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    fig.suptitle(f"growth timeline: {run}", fontsize=9)
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
