"""`python -m growth.experiment --report DIR [--md PATH]`: the report of an experiment folder, from the run folders
alone (OUT/experiment.json, and per arm train.json, heldout.jsonl, eval.json, metrics.jsonl, growth/search-*.jsonl,
wall.jsonl, commands.txt, eval_command.txt). Writes PATH (default docs/results/<plan name>.md) and its PNGs into
the folder PATH without `.md` (loss_vs_flops.png, zeroshot_avg.png, timeline_auto.png).

Rules: main arms (several seeds) are reported as mean ± std (sample std, n − 1); a difference between two arms
smaller than the larger of their stds is called a tie. Ablations (one seed) are compared with the automatic arm of
the same seed, and a difference smaller than the std of the automatic arm over its seeds is "within noise".
Lower held-out loss is better, higher accuracy and recall are better. A block between `<!-- notes -->` and
`<!-- /notes -->` in an existing report is kept when the report is written again (the human-written discussion).
"""
from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

from . import arms as A
from . import heldout as H

ZEROSHOT = [("fashion_mnist", "Fashion-MNIST"), ("mnist", "MNIST"), ("cifar10_foolbox", "CIFAR-10*"),
            ("cifar100_foolbox", "CIFAR-100*"), ("imagenet_foolbox", "ImageNet*"),
            ("synthetic_shapes", "synthetic shapes (72)")]
# In-domain sets are prompted from their training captions' templates (the ZEROSHOT scores, and the averages);
# where CLIP_benchmark has its own prompt for one (eval/builtin.py), its `transfer_acc1` is a column beside it.
# An eval.json written before that (no `prompts` field, no transfer metrics) scored these with CLIP_benchmark's
# prompt only: its acc1 is read as the transfer score, and the in-domain one is missing.
TRANSFER = {"mnist": "MNIST, CB prompt†", "synthetic_shapes": "synthetic, photo prompts†"}
RETRIEVAL = [("image_retrieval_recall@1", "R@1 t→i"), ("image_retrieval_recall@5", "R@5 t→i"),
             ("text_retrieval_recall@1", "R@1 i→t"), ("text_retrieval_recall@5", "R@5 i→t")]
NOTES = re.compile(r"<!-- notes -->.*?<!-- /notes -->", re.S)


# ---- reading ------------------------------------------------------------------------------------------------
def read_arm(run: Path) -> dict:
    """Everything the report uses of one run folder; missing parts are None / empty."""
    def js(name):
        p = run / name
        return json.loads(p.read_text()) if p.is_file() else None

    ev = js("eval.json") or []
    scores = {}
    for rec in ev:
        m = rec.get("metrics", {})
        if rec.get("task") == "zeroshot_classification":
            d = rec["dataset"]
            if d in TRANSFER and "transfer_acc1" not in m and "prompts" not in rec:
                scores[transfer_key(d)] = m.get("acc1")  # an older record: CLIP_benchmark's prompt only
                continue
            scores[d] = m.get("acc1")
            if "transfer_acc1" in m:
                scores[transfer_key(d)] = m["transfer_acc1"]
        elif rec.get("task") == "zeroshot_retrieval":
            scores.update({k: m.get(k) for k, _ in RETRIEVAL})
            scores["retrieval_set"] = rec.get("dataset")
    zs = [scores[k] for k, _ in ZEROSHOT if scores.get(k) is not None]
    scores["zs_avg"] = sum(zs) / len(zs) if zs else None
    scores["zs_tasks"] = [k for k, _ in ZEROSHOT if scores.get(k) is not None]
    rows = H.read(run)
    walls = [json.loads(line) for line in (run / "wall.jsonl").read_text().splitlines()] \
        if (run / "wall.jsonl").is_file() else []
    return {"name": run.name, "train": js(A.TRAIN_JSON) or {}, "heldout": rows, "scores": scores,
            "final_loss": rows[-1]["mean"] if rows else None, "wall": walls,
            "commands": (run / "commands.txt").read_text().splitlines() if (run / "commands.txt").is_file() else [],
            "eval_command": (run / "eval_command.txt").read_text().strip()
            if (run / "eval_command.txt").is_file() else "",
            "finished": (run / "eval.json").is_file()}


def transfer_key(dataset: str) -> str:
    """The scores key of a set's zero-shot top-1 with CLIP_benchmark's prompts (transfer to standard prompts)."""
    return f"{dataset}:transfer"


def per_task_columns() -> list[tuple[str, str]]:
    """The per-task table's zero-shot columns: each set, then its transfer column where it has one."""
    return [c for k, n in ZEROSHOT for c in [(k, n)] + ([(transfer_key(k), TRANSFER[k])] if k in TRANSFER else [])]


def compute_to_reach(rows: list[dict], target: float | None) -> float | None:
    """FLOPs at which the held-out curve first reaches `target` (linear between points); None if never."""
    if target is None:
        return None
    prev = None
    for r in rows:
        if r["mean"] <= target:
            if prev is None or prev["mean"] == r["mean"]:
                return r["flops"]
            frac = (prev["mean"] - target) / (prev["mean"] - r["mean"])
            return prev["flops"] + frac * (r["flops"] - prev["flops"])
        prev = r
    return None


def mean_std(values: list) -> tuple[float | None, float | None, int]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


def fmt(mean, std=None, digits=4, pct=False) -> str:
    if mean is None:
        return "–"
    scale = 100 if pct else 1
    d = 1 if pct else digits
    text = f"{mean * scale:.{d}f}"
    return text + (f" ± {std * scale:.{d}f}" if std is not None else "")


def verdict(delta: float | None, noise: float | None, higher_better: bool, names=("auto", "other"),
            pct: bool = False) -> str:
    """pct: the metric is a fraction shown in points, as its Δ is."""
    if delta is None:
        return "–"
    if noise is None:
        return "no noise estimate (one seed)"
    if abs(delta) < noise:
        return f"tie (|Δ| < std {fmt(noise, pct=pct)}{' pts' if pct else ''})"
    better = (delta > 0) == higher_better
    return f"{names[0] if better else names[1]} better"


HEADLINE_METRICS = (("final_loss", "held-out loss", False), ("zs_common", "zero-shot avg", True))


def compare(auto: list[dict], other: list[dict], key: str, higher_better: bool, names) -> tuple:
    """(Δ = mean auto − mean other, noise = the larger std, verdict) of one headline metric over seeds."""
    get = (lambda r: r[key]) if key == "final_loss" else (lambda r: r["scores"][key])
    ma, sa, _ = mean_std([get(r) for r in auto])
    mb, sb, _ = mean_std([get(r) for r in other])
    delta = ma - mb if ma is not None and mb is not None else None
    noise = max([x for x in (sa, sb) if x is not None], default=None)
    return delta, noise, verdict(delta, noise, higher_better, names, key != "final_loss")


# ---- plots --------------------------------------------------------------------------------------------------
def _colors(names, cmap="tab20"):
    import matplotlib
    cmap = matplotlib.colormaps[cmap]
    return {n: cmap(i % 20) for i, n in enumerate(names)}


def plot_loss(groups: dict, ablations: list[dict], ref: dict | None, target: float | None, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
    colors = {**_colors([a["name"] for a in ablations]), **_colors(list(groups), "tab10")}
    for base, runs in groups.items():
        for i, r in enumerate(runs):
            if r["heldout"]:
                axes[0].plot([x["flops"] for x in r["heldout"]], [x["mean"] for x in r["heldout"]], lw=1.2,
                             color=colors[base], alpha=1.0 if i == 0 else 0.55, label=base if i == 0 else None,
                             marker="." if len(r["heldout"]) < 30 else None)
    for a in ablations + ([ref] if ref else []):
        if a["heldout"]:
            axes[1].plot([x["flops"] for x in a["heldout"]], [x["mean"] for x in a["heldout"]], lw=1.0,
                         color="black" if a is ref else colors[a["name"]], label=a["name"],
                         ls="--" if a is ref else "-")
    for ax, title in zip(axes, ("main arms (every seed)", "ablations (seed 0) and auto-s0 (dashed)")):
        if target is not None:
            ax.axhline(target, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("cumulative training FLOPs (searches included)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2)
    axes[0].set_ylabel("held-out contrastive loss (mean over sets)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_zeroshot(bars: list[tuple[str, float, float | None, str]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(bars) + 2), 4))
    xs = range(len(bars))
    ax.bar(xs, [b[1] * 100 for b in bars], color=["tab:blue" if b[3] == "main" else "tab:grey" for b in bars])
    err = [(i, b) for i, b in enumerate(bars) if b[2] is not None]
    if err:
        ax.errorbar([i for i, _ in err], [b[1] * 100 for _, b in err], yerr=[b[2] * 100 for _, b in err], fmt="none",
                    ecolor="black", capsize=4)
    ax.set_xticks(list(xs), [b[0] for b in bars], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("zero-shot top-1, average over tasks (%)")
    ax.set_title("zero-shot average per arm (main: mean ± std over seeds; grey: ablations, one seed)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---- the report ---------------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "|".join(["---"] + ["---:"] * (len(header) - 1))
    return "\n".join(["| " + " | ".join(header) + " |", "|" + align + "|"]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def arch_text(arch: dict | None) -> str:
    if not arch:
        return "–"
    v, t, s = arch["vision"], arch["text"], arch["shared"]
    text = (f"V {v['layers']}×{v['width']} h{v['heads']} r{v['mlp_ratio']:g} / "
            f"T {t['layers']}×{t['width']} h{t['heads']} r{t['mlp_ratio']:g}")
    return text + (f" / S {s['layers']}×{s['width']}" if s.get("layers") else "")


def write_report(out: Path, md: Path | None = None) -> Path:
    exp_path = out / "experiment.json"
    if not exp_path.is_file():
        raise FileNotFoundError(f"{exp_path}: not an experiment folder (run python -m growth.experiment --plan ...)")
    exp = json.loads(exp_path.read_text())
    md = md or Path("docs/results") / f"{exp['name']}.md"
    figs = md.with_suffix("")
    figs.mkdir(parents=True, exist_ok=True)
    arms = [dict(read_arm(out / a["name"]), **{k: a[k] for k in ("base", "kind", "seed", "group", "label",
                                                                   "fork", "ref")}) for a in exp["arms"]]
    unfinished = [a["name"] for a in arms if not a["finished"]]
    arms = [a for a in arms if a["finished"]]  # every number is of finished arms only
    if not arms:
        raise FileNotFoundError(f"{out}: no arm has finished yet (no */eval.json)")
    by_name = {a["name"]: a for a in arms}
    groups: dict[str, list[dict]] = {}
    for a in arms:
        if a["group"] == "main":
            groups.setdefault(a["base"], []).append(a)
    ablations = [a for a in arms if a["group"] != "main"]
    auto_base = next((a["base"] for a in arms if a["kind"] == "auto" and a["group"] == "main"), None)
    final_base = exp.get("target") or next((a["base"] for a in arms if a["kind"] == "fixed_final"), None)
    equal_steps = exp.get("compute") == "equal_steps"
    first_base = next(iter(groups), None)  # equal steps without a target: B is the plan's first main arm
    def budget(a):  # B of the arm's seed: its ref's FLOPs, or its own for an automatic arm; equal steps: the target's
        src = by_name.get(f"{final_base or first_base}-s{a['seed']}") if equal_steps else (
            by_name.get(a.get("ref") or "") or by_name.get(f"{auto_base}-s{a['seed']}"))
        return (src or a)["train"].get("flops_total")

    def target(a):  # the fixed final architecture's final held-out loss at this seed
        f = by_name.get(f"{final_base}-s{a['seed']}") if final_base else None
        return f["final_loss"] if f else None

    present = [set(a["scores"]["zs_tasks"]) for a in arms if a["finished"]]
    common = [k for k, _ in ZEROSHOT if present and all(k in p for p in present)]
    for a in arms:  # the zero-shot average every comparison uses: over the tasks every arm was evaluated on
        vals = [a["scores"].get(k) for k in common]
        a["scores"]["zs_common"] = sum(vals) / len(vals) if vals and None not in vals else None
    for a in arms:
        b, f = budget(a), a["train"].get("flops_total")
        a["flops_ratio"] = f / b if f and b else None
        reach = compute_to_reach(a["heldout"], target(a))
        a["reach"] = reach
        a["reach_ratio"] = reach / b if reach is not None and b else None

    lines = [f"# {exp['name']}: results", ""]
    if exp.get("smoke"):
        lines += ["> **SMOKE RESULTS.** These numbers come from the `--smoke` plan: a tiny model, a few steps, 2,400",
                  "> Fashion-MNIST pairs. They check that the pipeline runs end to end and mean nothing about",
                  "> GrowCLIP. Do not cite them.", ""]
    inv = exp.get("invocations", [])
    first = inv[0] if inv else {}
    commits = sorted({x.get("commit", "") for x in inv} | {a["train"].get("commit", "") for a in arms} - {""})
    dirty = sorted({f for x in inv for f in x.get("dirty", [])})
    lines += [f"Plan `{exp['plan']}` ({exp.get('description', '') or 'see the plan file'}), experiment folder "
              f"`{out}`. {len(arms)} finished run folders"
              + (f"; **not finished, left out: {', '.join(unfinished)}**" if unfinished else "") + ".",
              f"Commit{'s' if len(commits) > 1 else ''}: {', '.join(f'`{c}`' for c in commits) or 'unknown'}"
              + (f" **with uncommitted changes to {len(dirty)} tracked file(s)** ({', '.join(dirty[:8])})"
                 if dirty else " (clean tree)") + ".", ""]
    if exp.get("target"):  # the growth-pays protocol: capacity check, compute to target, summary.json
        from . import pays
        sets = json.loads((out / "heldout" / "sets.json").read_text()) if (out / "heldout" / "sets.json").is_file() \
            else {"sets": {}, "batch": 0, "batches": 0}
        meta = {**exp, "commit": commits[-1] if commits else None,
                "synthetic": "synthetic" in json.dumps(sets["sets"])}
        lines += pays.section(meta, groups, list(sets["sets"]), figs, compute_to_reach,
                              sets["batch"] * sets["batches"], ablations)
    # main arms
    if groups:
        seeds = max(len(v) for v in groups.values())
        lines += [f"## Main arms (mean ± std over {seeds} seed{'s' if seeds > 1 else ''})", "",
                  (f"Equal steps: every arm trains the same steps on the same stream; B is the "
                   f"{'target' if final_base else 'first'} arm `{final_base or first_base}`'s training FLOPs at "
                   "the same seed. " if equal_steps else
                   "Equal training FLOPs: the budget B of a seed is the automatic arm's training FLOPs, searches "
                   "included; every other main arm is given the steps that spend B (growth/experiment/arms.py). ")
                  + "Held-out loss: the contrastive loss on the held-out sets "
                  f"({', '.join(json_sets(out))}), mean over sets, final checkpoint.", ""]
        rows = []
        for base, runs in groups.items():
            def ms(key, runs=runs):
                return mean_std([r[key] for r in runs])
            rows.append([f"**{base}**", arch_text(runs[0]["train"].get("final_arch")),
                         fmt(*ms("flops_ratio")[:2], digits=3), fmt(*ms("final_loss")[:2]),
                         fmt(*mean_std([r["scores"]["zs_common"] for r in runs])[:2], pct=True),
                         fmt(*mean_std([r["scores"]["zs_avg"] for r in runs])[:2], pct=True)
                         + f" ({len(runs[0]['scores']['zs_tasks'])})",
                         fmt(*ms("reach_ratio")[:2], digits=3) + f" ({sum(r['reach'] is not None for r in runs)}"
                         f"/{len(runs)} reached)", str(len(runs))])
        lines += [table(["arm", "final architecture (seed 0)", "FLOPs / B", "held-out loss", "zero-shot avg (%)",
                         "avg over all its tasks (%, n)", f"FLOPs to {final_base or 'the target'}'s loss / B",
                         "seeds"], rows), "",
                  f"Zero-shot avg: over {', '.join(common) or 'no task'} (the tasks every arm was evaluated on; "
                  "Fashion-MNIST and MNIST with prompts from their training captions); "
                  "the next column averages all the zero-shot tasks of the arm (the paper's summary number where "
                  "the plan evaluates all five: Fashion-MNIST, MNIST, CIFAR-10/100 and ImageNet foolbox samples).",
                  ""]
        runs_all = [r for runs in groups.values() for r in runs]
        columns = [(k, n) for k, n in per_task_columns() + RETRIEVAL
                   if any(r["scores"].get(k) is not None for r in runs_all)]  # tasks no arm ran are left out
        rows = []
        for base, runs in groups.items():
            row = [f"**{base}**"]
            for key, _ in columns:
                row.append(fmt(*mean_std([r["scores"].get(key) for r in runs])[:2], pct=True))
            rows.append(row)
        shown = {k for k, _ in columns}
        notes = []
        if shown & {"fashion_mnist", "mnist"}:
            notes.append("Fashion-MNIST and MNIST: in-domain, prompted with the templates of their training "
                         "captions; † = the same MNIST test images with CLIP_benchmark's prompt 'a photo of the "
                         "number: \"{c}\".', which no training caption resembles: transfer to standard prompts, not "
                         "in the averages")
        if shown & {"cifar10_foolbox", "cifar100_foolbox", "imagenet_foolbox"}:
            notes.append("* = foolbox's 20 sample images, CLIP_benchmark class names and templates")
        if "synthetic_shapes" in shown:
            notes.append("synthetic shapes: 2,000 fresh stage-1 draws, 72 colour-shape classes, prompted with the "
                         "captions' prefixes; † = CLIP-style photo prompts, transfer, not in the averages")
        sets = sorted({r["scores"].get("retrieval_set") for r in runs_all} - {None})
        if sets:
            notes.append(f"retrieval on {', '.join(sets)}")
        lines += [f"Per task (%; {'; '.join(notes)}); '–': not evaluated for this arm (the plan's eval.extra) or "
                  "skipped by python -m eval (data not fetched):", "",
                  table(["arm"] + [n for _, n in columns], rows), ""]
        if auto_base in groups:
            lines += ["### Headline comparisons", "",
                      "Δ = automatic − other (mean over seeds). A difference smaller than the larger of the two "
                      "arms' stds is a tie.", ""]
            auto = groups[auto_base]
            rows = []
            for base, runs in groups.items():
                if base == auto_base:
                    continue
                for key, name, hb in HEADLINE_METRICS:
                    delta, noise, said = compare(auto, runs, key, hb, (auto_base, base))
                    rows.append([f"{auto_base} vs {base}", name, fmt(delta, pct=key != "final_loss"),
                                 fmt(noise, pct=key != "final_loss"), said])
            lines += [table(["comparison", "metric", "Δ", "noise (max std)", "verdict"], rows,
                            "---|---|---:|---:|---"), ""]
    # ablations
    if ablations:
        lines += ["## Ablations (one seed each)", "",
                  "Each is the automatic arm with one growth setting changed"
                  + (", forked from it at its first growth (same run up to there)" if any(a["fork"] for a in
                                                                                           ablations) else "")
                  + ". Δ is against the automatic arm of the same seed; *within noise* when |Δ| is below the "
                  "automatic arm's std over seeds.", ""]
        auto_runs = groups.get(auto_base, [])
        noise_loss = mean_std([r["final_loss"] for r in auto_runs])[1]
        noise_zs = mean_std([r["scores"]["zs_common"] for r in auto_runs])[1]
        rows = []
        for a in ablations:
            ref = by_name.get(f"{auto_base}-s{a['seed']}")
            dl = a["final_loss"] - ref["final_loss"] if ref and a["final_loss"] is not None and \
                ref["final_loss"] is not None else None
            dz = a["scores"]["zs_common"] - ref["scores"]["zs_common"] if ref and a["scores"]["zs_common"] \
                is not None and ref["scores"]["zs_common"] is not None else None
            moves = "; ".join(f"{g['step']}: {g['move']}" for g in a["train"].get("growths", [])) or "no growth"
            rows.append([a["name"], a["label"] or "", moves, fmt(a["flops_ratio"], digits=3), fmt(a["final_loss"]),
                         fmt(dl) + (" (within noise)" if dl is not None and noise_loss and abs(dl) < noise_loss
                                    else ""),
                         fmt(a["scores"]["zs_common"], pct=True),
                         fmt(dz, pct=True) + (" (within noise)" if dz is not None and noise_zs and abs(dz) < noise_zs
                                              else ""),
                         fmt(a["scores"].get("image_retrieval_recall@1"), pct=True)])
        lines += [table(["arm", "what", "growths (step: move)", "FLOPs / B", "held-out loss", "Δ loss",
                         "zero-shot avg (%)", "Δ zs (pts)", "R@1 t→i (%)"], rows,
                        "---|---|---|---:|---:|---:|---:|---:|---:"), ""]
    # growths
    auto_family = [a for a in arms if a["kind"] in ("auto", "hand")]
    if auto_family:
        lines += ["## Growths", "", "Every growth of the growing arms (search winner, or the written move), from "
                  "the final checkpoint's growth history.", ""]
        rows = []
        for a in auto_family:
            for g in a["train"].get("growths", []):
                rows.append([a["name"], str(g["step"]), f"`{g['move']}`", f"{g['g']:.3f}" if g.get("g") else "–",
                             "search" if g.get("searched") else "written", json.dumps(g.get("pim") or {})])
        lines += [table(["arm", "after step", "move", "g", "how", "PIM"], rows, "---|---:|---|---:|---|---"), ""]
    # plots
    ref0 = by_name.get(f"{auto_base}-s{min(a['seed'] for a in arms)}") if auto_base else None
    tgt = mean_std([a["final_loss"] for a in groups.get(final_base, [])])[0] if final_base else None
    plot_loss(groups, ablations, ref0, tgt, figs / "loss_vs_flops.png")
    bars = []
    for base, runs in groups.items():
        m, s, _ = mean_std([r["scores"]["zs_common"] for r in runs])
        if m is not None:
            bars.append((base, m, s, "main"))
    bars += [(a["name"], a["scores"]["zs_common"], None, "ablation") for a in ablations
             if a["scores"]["zs_common"] is not None]
    if bars:
        plot_zeroshot(bars, figs / "zeroshot_avg.png")
    rel = figs.name
    lines += ["## Plots", "", f"![held-out loss against cumulative training FLOPs]({rel}/loss_vs_flops.png)", "",
              "Held-out loss against cumulative training FLOPs (searches included); dotted: the fixed final "
              "architecture's final held-out loss (mean over seeds).", ""]
    if bars:
        lines += [f"![zero-shot average per arm]({rel}/zeroshot_avg.png)", ""]
    if ref0 and (out / ref0["name"] / "metrics.jsonl").is_file():
        from growth import timeline
        timeline.plot(out / ref0["name"], figs / "timeline_auto.png")
        lines += [f"![growth timeline of {ref0['name']}]({rel}/timeline_auto.png)", "",
                  f"Growth timeline of `{ref0['name']}` (python -m growth.timeline): training loss and learning rate "
                  "against samples and against cumulative FLOPs, searches shaded and labelled with their share of "
                  "compute, growths, searches that kept the architecture and data stages marked.", ""]
    # the paper's claims, and the defaults
    lines += claims_section(groups, ablations, auto_base)
    lines += defaults_section(ablations, by_name, auto_base, groups)
    # provenance
    lines += ["## How these numbers were made", ""]
    lines += [f"- Run: `{' '.join(x.get('argv', []))}` — started {x.get('started', '?')}, ended "
              f"{x.get('ended', '(interrupted)')}, {x.get('seconds', '?')} s wall" for x in inv]
    lines += [f"- Report: `python -m growth.experiment --report {out}" + (f" --md {md}`" if md else "`"),
              f"- Machine: {first.get('cpu', '?')}, {first.get('cores', '?')} cores, {first.get('mem_gib', '?')} GiB, "
              f"{first.get('machine', '?')}; Python {first.get('python', '?')}, torch {first.get('torch', '?')}, "
              f"DeepSpeed {first.get('deepspeed', '?')}"
              + (f"; GPU: {first.get('gpus')} x {first.get('gpu')}" if first.get("gpu") else "")
              + "; load average at start "
              f"{', '.join(f'{x:.1f}' for x in first.get('loadavg', []))} (1, 5, 15 min).",
              f"- Launch: `{exp.get('launch')}` on {exp.get('nproc')} ranks "
              + ("(NCCL, GPU)" if first.get("device") == "cuda" else "(gloo, CPU)")
              + (" — every arm trained in one deepspeed launch (growth/experiment/worker.py)"
                 if exp.get("launch") == "inprocess" else " — one deepspeed launch per arm") + ".", ""]
    rows = []
    total = 0.0
    for a in arms:
        w: dict[str, float] = {}
        cpu = 0.0
        for r in a["wall"]:
            w[r["phase"]] = w.get(r["phase"], 0.0) + r["seconds"]
            cpu += r.get("cpu_s", 0.0) if r["phase"].startswith("train") else 0.0
        total += sum(w.values())
        rows.append([a["name"], *(f"{w[p]:.0f}" if p in w else "–" for p in ("train", "heldout", "eval")),
                     f"{sum(w.values()):.0f}", f"{cpu:.0f}" if cpu else "–"])
    launches = [json.loads(line) for line in (out / "wall.jsonl").read_text().splitlines()] \
        if (out / "wall.jsonl").is_file() else []
    lines += [f"Wall time per arm (s; sum over the arms: {total / 60:.1f} min"
              + (f"; the shared training launches took {sum(x['seconds'] for x in launches):.0f} s in all, start-up "
                 f"included, of which the arms' own training is the 'train' column" if launches else "")
              + f"; whole invocations: {sum(x.get('seconds') or 0 for x in inv) / 60:.1f} min):", "",
              table(["arm", "train", "held-out", "eval", "total", "train CPU s (all ranks)"], rows), "",
              "### Commands", "", "Every number above comes from these commands, at the commit named at the top "
              "(`deepspeed` is the venv's launcher; the driver adds `--master_port`).", "", "```"]
    for fork in sorted((out / "forks").glob("*/fork.json")):
        lines += [f"# fork of {json.loads(fork.read_text())['from']} (the start of the arms with --resume "
                  f"{fork.parent})", json.loads(fork.read_text()).get("command", "?"), ""]
    for a in arms:
        lines += [f"# {a['name']}"] + a["commands"] + ([a["eval_command"]] if a["eval_command"] else []) + [""]
    lines += ["```", ""]
    notes = "<!-- notes -->\n<!-- /notes -->"
    if md.is_file():
        found = NOTES.search(md.read_text())
        notes = found.group(0) if found else notes
    lines += ["## Discussion", "", notes, ""]
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines))
    return md


def json_sets(out: Path) -> list[str]:
    p = out / "heldout" / "sets.json"
    if not p.is_file():
        return []
    sets = json.loads(p.read_text())
    return [f"{k} ({sets['batches']} x {sets['batch']} pairs)" for k in sets["sets"]] + \
        [f"{k} left out: data missing" for k in sets.get("missing", {})]


def defaults_section(ablations: list[dict], by_name: dict, auto_base: str | None, groups: dict) -> list[str]:
    """What the ablations say about PIM's m and source and the search's penalty: the best final held-out loss of
    each family (the automatic arm is the current default), and whether its lead is beyond noise."""
    if not auto_base or not ablations:
        return []
    auto0 = by_name.get(f"{auto_base}-s{ablations[0]['seed']}")
    if not auto0:
        return []
    noise = mean_std([r["final_loss"] for r in groups.get(auto_base, [])])[1]
    families = {"PIM m": lambda o: o.startswith("growth.pim_m="),
                "PIM source": lambda o: o.startswith("growth.pim_source="),
                "search penalty": lambda o: o.startswith("growth.penalty=")}
    rows = []
    for fam, match in families.items():
        cands = [(auto0["name"] + " (current default)", auto0)]
        cands += [(a["name"], a) for a in ablations if any(match(o) for o in overrides_of(a))]
        cands = [(n, a) for n, a in cands if a["final_loss"] is not None]
        if len(cands) < 2:
            continue
        best = min(cands, key=lambda c: c[1]["final_loss"])
        lead = best[1]["final_loss"] - auto0["final_loss"]
        sure = noise is not None and abs(lead) >= noise
        rows.append([fam, ", ".join(f"{n}: {a['final_loss']:.4f}" for n, a in cands), best[0],
                     "keep the default" if best[1] is auto0 else
                     ("change the default" if sure else "within noise: keep the default")])
    if not rows:
        return []
    return ["## Defaults (PIM m and source, search penalty)", "",
            "Final held-out loss of each setting (lower is better); a lead smaller than the automatic arm's std over "
            "seeds does not change a default.", "",
            table(["setting", "final held-out loss", "best", "decision"], rows, "---|---|---|---"), ""]


def overrides_of(a: dict) -> list[str]:
    cmds = " ".join(a["commands"])
    return re.findall(r"growth\.[a-z_]+=\S+", cmds)


def claims_section(groups: dict, ablations: list[dict], auto_base: str | None) -> list[str]:
    """The paper's two claims against the numbers, mechanically (the discussion below says why)."""
    if not auto_base or auto_base not in groups:
        return []
    auto = groups[auto_base]
    lines = ["## The paper's claims", ""]
    for kind, what in (("fixed_final", "the fixed final architecture"), ("fixed_small", "the fixed small one"),
                       ("hand", "the hand-written schedule")):
        base = next((b for b, runs in groups.items() if runs[0]["kind"] == kind), None)
        if not base:
            continue
        parts = []
        for key, name, higher in HEADLINE_METRICS:
            delta, noise, said = compare(auto, groups[base], key, higher, ("growth", base))
            if delta is None:
                continue
            shown = f"{delta * 100:+.1f} pts" if key != "final_loss" else f"{delta:+.4f}"
            parts.append(f"{name} Δ {shown}: {said}")
        lines.append(f"- Automatic growth vs {what} at equal FLOPs — " + ("; ".join(parts) or "no numbers") + ".")
    only = [a for a in ablations if a["base"].startswith("only-") and a["final_loss"] is not None]
    if len(only) > 1:
        noise = mean_std([r["final_loss"] for r in auto])[1]
        lo, hi = min(only, key=lambda a: a["final_loss"]), max(only, key=lambda a: a["final_loss"])
        spread = hi["final_loss"] - lo["final_loss"]
        differ = "cannot tell (one seed of auto)" if noise is None else (
            "they differ" if spread >= noise else "no difference beyond noise")
        rated = [a for a in only if a["flops_ratio"]]
        cost = ""
        if len(rated) > 1:
            cheap, dear = min(rated, key=lambda a: a["flops_ratio"]), max(rated, key=lambda a: a["flops_ratio"])
            cost = (f" They train the same steps at unequal compute: FLOPs / B from {cheap['flops_ratio']:.3f} "
                    f"({cheap['base']}) to {dear['flops_ratio']:.3f} ({dear['base']}).")
        lines.append(f"- Growth dimensions (one at a time): final held-out loss from {lo['final_loss']:.4f} "
                     f"({lo['base']}) to {hi['final_loss']:.4f} ({hi['base']}), spread {spread:.4f} against the "
                     f"automatic arm's std {fmt(noise)}: {differ}.{cost}")
    return lines + [""]
