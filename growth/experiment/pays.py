"""Does growth pay: the report section of a plan with `compute: equal_steps`, a `target:` and a `start:` arm
(configs/experiments/growth-pays.yaml). Written by report.write_report before everything else.

1. **Capacity check.** The start and the target arm, every seed: final held-out loss per set and their mean. It
   holds when the target is lower on every seed and the mean difference exceeds the larger of the two arms'
   stds over seeds (the report's noise rule). Without it no growth claim is made.
2. **Compute to target.** Per seed, the target arm's final held-out loss L* and its training FLOPs F*. For every
   main arm, the first FLOPs at which its held-out curve reaches L* (linear between points; report.compute_to_reach),
   as a fraction of F*: the arm's *compute to target*. An arm that never reaches L* has no fraction on that seed
   (it is reported as "not reached by" its total / F*). The saving is 1 - fraction.
   **Tie rule**: the paired per-seed differences d_s = fraction_s - 1 (the target's own fraction is 1 by
   definition, or less where an earlier point of its curve is already as low); the arm beats the target when
   mean(d) + std(d) < 0, loses when mean(d) - std(d) > 0, and ties otherwise; fewer than two reached seeds: no
   verdict ("not reached" when none).
3. **At equal FLOPs.** The automatic arm's final held-out loss against the target's curve at the same FLOPs
   (interpolated), paired per seed, with the same tie rule. The target's point there is mid-schedule (its
   learning rate has not decayed yet), which favours the arm whose run has ended: said beside the number.
4. `summary.json` beside the PNGs, and two PNGs: compute to target per arm, held-out loss per set against FLOPs.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from .report import table as _table


def _ms(values):
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def _f(mean, std=None, digits=4, pct=False):
    if mean is None:
        return "–"
    k = 100 if pct else 1
    d = 1 if pct else digits
    return f"{mean * k:.{d}f}" + (f" ± {std * k:.{d}f}" if std is not None else "")


EQ_WORDS = {"better": "auto better", "worse": "target better"}


def paired_verdict(diffs: list[float]) -> str:
    """'better' | 'worse' | 'tie' for per-seed differences (negative = better), by mean ± std; 'n/a' below 2."""
    if len(diffs) < 2:
        return "n/a"
    mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
    if mean + std < 0:
        return "better"
    if mean - std > 0:
        return "worse"
    return "tie"


def loss_at(rows: list[dict], flops: float) -> float | None:
    """A held-out curve's mean loss at `flops` (linear between points); None outside it."""
    for a, b in zip(rows, rows[1:]):
        if a["flops"] <= flops <= b["flops"]:
            if b["flops"] == a["flops"]:
                return b["mean"]
            t = (flops - a["flops"]) / (b["flops"] - a["flops"])
            return a["mean"] + t * (b["mean"] - a["mean"])
    return rows[-1]["mean"] if rows and math.isclose(rows[-1]["flops"], flops, rel_tol=1e-9) else None


def capacity(start: list[dict], target: list[dict], sets: list[str]) -> dict:
    """The capacity check's numbers: per seed and per set, and whether it holds."""
    by_seed = {a["seed"]: a for a in target}
    pairs = [(s, by_seed[s["seed"]]) for s in start if s["seed"] in by_seed and s["final_loss"] is not None
             and by_seed[s["seed"]]["final_loss"] is not None]
    diffs = [s["final_loss"] - t["final_loss"] for s, t in pairs]
    ms_s, ms_t = _ms([s["final_loss"] for s, _ in pairs]), _ms([t["final_loss"] for _, t in pairs])
    noise = max([x for x in (ms_s[1], ms_t[1]) if x is not None], default=None)
    mean = statistics.fmean(diffs) if diffs else None
    holds = bool(len(pairs) >= 3 and all(d > 0 for d in diffs) and noise is not None and mean > noise)
    per_set = {k: {"start": _ms([s["heldout"][-1]["loss"].get(k) for s, _ in pairs]),
                   "target": _ms([t["heldout"][-1]["loss"].get(k) for _, t in pairs])} for k in sets}
    return {"pairs": pairs, "diffs": diffs, "mean": mean, "noise": noise, "holds": holds, "start": ms_s,
            "target": ms_t, "per_set": per_set}


def versus(r: dict, t: dict, reach) -> tuple | None:
    """Run r against the target run t of its seed: (the FLOPs at which r's curve reaches t's final loss / t's
    FLOPs, or None; r's FLOPs / t's FLOPs; the FLOPs at which t's curve reaches r's final loss / r's FLOPs, or
    None). The last asks the question the other way round, for an arm that never reaches the target: below 1,
    the target got to that arm's loss cheaper. None when either run lacks a final loss or FLOPs."""
    f_star, f = t["train"].get("flops_total"), r["train"].get("flops_total")
    if not f_star or not f or t["final_loss"] is None or r["final_loss"] is None:
        return None
    hit, back = reach(r["heldout"], t["final_loss"]), reach(t["heldout"], r["final_loss"])
    return hit / f_star if hit is not None else None, f / f_star, back / f if back is not None else None


def compute_to_target(groups: dict, target_base: str, reach) -> dict:
    """{arm: {seed: versus(arm's run, the target's run of that seed)}}."""
    targets = {a["seed"]: a for a in groups.get(target_base, [])}
    out = {}
    for base, runs in groups.items():
        out[base] = {}
        for r in runs:
            v = versus(r, targets[r["seed"]], reach) if r["seed"] in targets else None
            if v is not None:
                out[base][r["seed"]] = v
    return out


def equal_flops(auto: list[dict], target: list[dict]) -> list[tuple[int, float, float]]:
    """(seed, auto's final loss, target's loss at auto's total FLOPs) per seed."""
    by_seed = {a["seed"]: a for a in target}
    out = []
    for a in auto:
        t = by_seed.get(a["seed"])
        if t and a["final_loss"] is not None:
            there = loss_at(t["heldout"], a["train"]["flops_total"])
            if there is not None:
                out.append((a["seed"], a["final_loss"], there))
    return out


def plot_fractions(ctt: dict, order: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(5.5, 1.3 * len(order) + 2), 4))
    for i, base in enumerate(order):
        fr = [v[0] for v in ctt[base].values() if v[0] is not None]
        missed = [v[1] for v in ctt[base].values() if v[0] is None]
        if fr:
            m, s = _ms(fr)
            ax.bar(i, m, color="tab:blue", alpha=0.7)
            if s is not None:
                ax.errorbar(i, m, yerr=s, fmt="none", ecolor="black", capsize=5)
            ax.scatter([i] * len(fr), fr, color="black", s=12, zorder=3)
        for x in missed:  # not reached: its total compute, an open marker
            ax.scatter(i, x, facecolors="none", edgecolors="tab:red", s=40, zorder=3)
        ax.text(i, 0.02, f"{len(fr)}/{len(ctt[base])} reached", ha="center", fontsize=7, color="white"
                if fr else "black")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.axhline(0.7, color="tab:green", lw=0.8, ls=":")
    ax.set_xticks(range(len(order)), order, fontsize=8)
    ax.set_ylabel("FLOPs to reach the target's final loss / target's FLOPs")
    ax.set_title("compute to target (mean ± std, dots: seeds; red circles: not reached, at the arm's total; "
                 "dotted: the 0.7 goal)", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_sets(groups: dict, sets: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(sets) + 1, figsize=(5 * (len(sets) + 1), 4.2))
    cmap = matplotlib.colormaps["tab10"]
    for j, base in enumerate(groups):
        for i, r in enumerate(groups[base]):
            xs = [p["flops"] / 1e12 for p in r["heldout"]]
            for ax, key in zip(axes, sets + ["mean"]):
                ys = [p["mean"] if key == "mean" else p["loss"].get(key) for p in r["heldout"]]
                ax.plot(xs, ys, color=cmap(j), lw=1.1, alpha=1.0 if i == 0 else 0.5,
                        label=base if i == 0 else None)
    for ax, key in zip(axes, sets + ["mean"]):
        ax.set_title(f"held-out: {key}" + (" over sets" if key == "mean" else ""), fontsize=9)
        ax.set_xlabel("cumulative training TFLOPs (searches included)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("contrastive loss")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def ablation_rows(ablations: list[dict], groups: dict, target_base: str, reach) -> list[list[str]]:
    """One-seed arms against the target of their seed: FLOPs / F*, final loss, compute to target."""
    targets = {a["seed"]: a for a in groups.get(target_base, [])}
    rows = []
    for a in ablations:
        v = versus(a, targets[a["seed"]], reach) if a["seed"] in targets else None
        if v is None:
            continue
        moves = "; ".join(f"{g['step']}: {g['move']}" for g in a["train"].get("growths", [])) or "no growth"
        rows.append([a["name"], a.get("label") or "", moves, f"{v[1]:.3f}", _f(a["final_loss"]),
                     f"{v[0]:.3f}" if v[0] is not None else "not reached", f"{v[2]:.3f}" if v[2] is not None else "–"])
    return rows


def section(exp: dict, groups: dict, sets: list[str], figs: Path, reach, pairs_per_set: int,
            ablations: list[dict] = ()) -> list[str]:
    """The report's first sections, the two PNGs and summary.json (figs/summary.json)."""
    target_base, start_base = exp.get("target"), exp.get("start")
    auto_base = next((b for b, runs in groups.items() if runs[0]["kind"] == "auto"), None)
    synthetic = ["**Data: SYNTHETIC.** The held-out sets and the training stream are procedurally generated "
                 "(`python -m pretrain.data.prepare synthetic`; their manifests say `synthetic: true`), not real "
                 "image-text data.", ""] if exp.get("synthetic") else []
    lines = []
    cap = capacity(groups.get(start_base, []), groups.get(target_base, []), sets) \
        if start_base and target_base else None
    if cap:
        from .report import arch_text
        arch = {b: arch_text(groups[b][0]["train"].get("final_arch")) for b in (start_base, target_base)}
        gf = {b: groups[b][0]["train"].get("gflops_final") for b in (start_base, target_base)}
        ratio = gf[target_base] / gf[start_base] if gf[start_base] and gf[target_base] else None
        rows = [[f"seed {s['seed']}", _f(s["final_loss"]), _f(t["final_loss"]), _f(s["final_loss"] - t["final_loss"])]
                for s, t in cap["pairs"]]
        rows.append(["**mean ± std**", _f(*cap["start"]), _f(*cap["target"]), _f(cap["mean"])])
        lines += ["## 1. Capacity check (before any growth claim)", "",
                  f"`{start_base}` ({arch[start_base]}; {gf[start_base]:.4f} forward GFLOPs per pair) against "
                  f"`{target_base}` ({arch[target_base]}; {gf[target_base]:.4f}, {ratio:.1f}x), both trained "
                  f"from scratch on the same stream and steps. Held-out loss: mean over the sets, {pairs_per_set} "
                  "pairs each.", "",
                  _table(["seed", f"{start_base} (start)", f"{target_base} (target)", "start − target"], rows), "",
                  f"**The capacity check {'holds' if cap['holds'] else 'does NOT hold'}**: the target is lower on "
                  f"{sum(d > 0 for d in cap['diffs'])}/{len(cap['diffs'])} seeds, by {_f(cap['mean'])} on average "
                  f"against a seed noise (the larger std) of {_f(cap['noise'])}."
                  + ("" if cap["holds"] else " No growth claim below is made."), ""]
        rows = [[k, _f(*v["start"]), _f(*v["target"])] for k, v in cap["per_set"].items()]
        lines += ["Per held-out set (final loss, mean ± std over seeds):", "",
                  _table(["set", start_base, target_base], rows), ""]
    ctt = compute_to_target(groups, target_base, reach) if target_base else {}
    verdicts = {}
    back = {base: {seed: v[2] for seed, v in per.items()} for base, per in ctt.items()}
    if ctt:
        rows = []
        for base, per in ctt.items():
            fr = [v[0] for v in per.values() if v[0] is not None]
            diffs = [v[0] - 1 for v in per.values() if v[0] is not None]
            said = paired_verdict(diffs) if len(fr) == len(per) else (
                "not reached" if not fr else f"reached on {len(fr)}/{len(per)} seeds only")
            verdicts[base] = said
            seeds = ", ".join(f"s{s}: " + (f"{v[0]:.3f}" if v[0] is not None else f"> {v[1]:.3f} (not reached)")
                              for s, v in sorted(per.items()))
            m, s = _ms(fr)
            rows.append([f"**{base}**", seeds, _f(m, s, 3), _f(1 - m, None, 3) if m is not None else "–",
                         _f(*_ms(diffs), 3), said, _f(*_ms(list(back.get(base, {}).values())), 3)])
        lines += ["## 2. Compute to reach the target's final held-out loss", "",
                  f"Per seed: the FLOPs at which the arm's held-out curve first reaches `{target_base}`'s final "
                  "held-out loss (every FLOP counted: the small phases and the searches; converting a checkpoint "
                  "computes no FLOPs), as a "
                  "fraction of the target's own training FLOPs. Paired difference d = fraction − 1 per seed; "
                  "**tie rule**: better when mean(d) + std(d) < 0, worse when mean(d) − std(d) > 0, else a tie.", "",
                  _table(["arm", "per seed", "mean ± std", "saving", "paired d (mean ± std)", "verdict",
                          "target's FLOPs to this arm's final loss / this arm's FLOPs"], rows,
                         "---|---|---:|---:|---:|---|---:"), "",
                  "The last column asks the question the other way round, for arms that never reach the target: "
                  f"how much of its own compute `{target_base}` needed to reach the arm's final held-out loss (its "
                  "curve, linear between points), per seed, mean ± std. Below 1, training the target from scratch "
                  "reached that loss with fewer FLOPs than the arm spent.", ""]
        plot_fractions(ctt, list(ctt), figs / "compute_to_target.png")
        lines += [f"![compute to target]({figs.name}/compute_to_target.png)", ""]
        rows = ablation_rows(list(ablations), groups, target_base, reach)
        if rows:
            lines += ["One-seed arms (growth timing, forced growth with one setting changed, search settings), "
                      f"against `{target_base}` of the same seed (one seed: no noise estimate of their own; the "
                      "main arms' stds above are the yardstick):", "",
                      _table(["arm", "what", "growths (step: move)", "FLOPs / target's", "final held-out loss",
                              "compute to target", "target's FLOPs to its loss / its FLOPs"], rows,
                             "---|---|---|---:|---:|---:|---:"), ""]
    eq = equal_flops(groups.get(auto_base, []), groups.get(target_base, [])) if auto_base and target_base else []
    eq_said = paired_verdict([a - t for _, a, t in eq]) if eq else "n/a"
    if eq:
        rows = [[f"seed {s}", _f(a), _f(t), _f(a - t)] for s, a, t in eq]
        lines += ["## 3. The automatic arm against the target at equal FLOPs", "",
                  _table(["seed", f"{auto_base} final", f"{target_base} at the same FLOPs", "Δ"], rows), "",
                  f"Verdict (same tie rule, lower is better): **{EQ_WORDS.get(eq_said, eq_said)}**. "
                  "The target's point is mid-run: its learning rate has not decayed there, so this comparison "
                  "favours the automatic arm; the compute-to-target table above has no such bias.", ""]
    if groups and sets:
        plot_sets(groups, sets, figs / "loss_by_set.png")
        lines += [f"![held-out loss per set]({figs.name}/loss_by_set.png)", "",
                  "Held-out loss per set and their mean against cumulative training FLOPs (every seed; the first "
                  "seed opaque).", ""]
    auto_ctt = ctt.get(auto_base, {})
    fr = [v[0] for v in auto_ctt.values() if v[0] is not None]
    m, s = _ms(fr) if len(fr) == len(auto_ctt) else (None, None)
    summary = {"commit": exp.get("commit"), "plan": exp.get("plan"), "synthetic": exp.get("synthetic"),
               "seeds": sorted(auto_ctt), "target_arm": target_base, "start_arm": start_base,
               "auto_arm": auto_base, "compute_to_target_mean": m, "compute_to_target_std": s,
               "compute_to_target_per_seed": {str(k): v[0] for k, v in sorted(auto_ctt.items())},
               "auto_vs_target_compute": verdicts.get(auto_base),
               "auto_beats_target_at_equal_flops": {"better": True, "worse": False, "tie": "tie"}.get(eq_said,
                                                                                                      eq_said),
               "capacity_check_holds": cap["holds"] if cap else None,
               "capacity_gap_mean": cap["mean"] if cap else None, "capacity_noise": cap["noise"] if cap else None,
               "arms": {b: {"compute_to_target": {str(k): v[0] for k, v in sorted(p.items())},
                            "target_to_arm_loss": {str(k): v for k, v in sorted(back.get(b, {}).items())},
                            "total_over_target": {str(k): v[1] for k, v in sorted(p.items())},
                            "verdict": verdicts.get(b)} for b, p in ctt.items()}}
    figs.mkdir(parents=True, exist_ok=True)
    (figs / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return synthetic + headline(summary, ctt, verdicts, cap) + lines


def headline(summary: dict, ctt: dict, verdicts: dict, cap: dict | None) -> list[str]:
    """The report's opening lines: the capacity check's verdict and compute to target of every main arm."""
    out = ["## Headline", ""]
    if cap is not None:
        out.append(f"- Capacity check: **{'holds' if cap['holds'] else 'does not hold'}** (start − target "
                   f"{_f(cap['mean'])}, seed noise {_f(cap['noise'])}; table 1)."
                   + ("" if cap["holds"] else " No growth claim is made."))
    for base, per in ctt.items():
        if base == summary["target_arm"]:
            continue
        fr = [v[0] for v in per.values() if v[0] is not None]
        if len(fr) == len(per) and fr:
            m, s = _ms(fr)
            said = f"{_f(m, s, 3)} of the target's compute ({verdicts.get(base)})"
        else:
            spent = _ms([v[1] for v in per.values()])[0]
            said = (f"not reached on {len(per) - len(fr)}/{len(per)} seeds (it spent {spent:.3f} of the target's "
                    "compute)")
        out.append(f"- Compute to reach `{summary['target_arm']}`'s final held-out loss, `{base}`: {said}.")
    eq = summary["auto_beats_target_at_equal_flops"]
    out += [f"- `{summary['auto_arm']}` against the target at equal FLOPs: "
            f"{ {True: 'auto better', False: 'target better'}.get(eq, eq)} (table 3, and its caveat).", ""]
    return out
