"""Print result files side by side: one row per (dataset, metric), one column per file.

    python -m eval.compare runs/a/eval.json runs/b/eval.json [CLIP_benchmark_output.json ...]

A file holds a list of records (python -m eval --out) or one record (CLIP_benchmark's own output).
Values are percentages, except the linear probe's C; a dash marks a metric a file does not have.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(path: str) -> dict[tuple[str, str], float]:
    data = json.loads(Path(path).read_text())
    records = data if isinstance(data, list) else [data]
    return {(r["dataset"], k): v for r in records for k, v in r["metrics"].items()
            if isinstance(v, (int, float))}


def cell(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if metric == "C" else f"{100 * value:.2f}"


def table(paths: list[str]) -> str:
    results = [load(p) for p in paths]
    rows = list(dict.fromkeys(key for r in results for key in r))  # first-seen order
    header = ["dataset", "metric", *paths]
    body = [[d, m, *(cell(m, r.get((d, m))) for r in results)] for d, m in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in [header, *body])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+")
    print(table(p.parse_args(argv).files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
