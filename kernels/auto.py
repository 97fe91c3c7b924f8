"""`train.kernels=auto`: per op and shape class, the implementation a recorded benchmark on this GPU model found
fastest.

The record is `kernels/records.json`, written by `python -m kernels.bench --record kernels/records.json` on a GPU
(one entry per GPU model, e.g. "H200"). Without an entry for the GPU in use (or on a CPU), attention uses torch
SDPA and the loss the torch path; a shape class the entry does not name does the same. The Triton attention is
never picked for head dims above `kernels.attention.MAX_HEAD_DIM`, so `auto` never fails on a model shape.

Shape classes:
  attention: "n{N bucket}_d{BLOCK_D}[_causal]", the tile-table buckets of kernels/attention.py (N <= 64, 96,
             128, 224, 320, 640, "large"), head dim rounded up to 32/64/128, causal or not;
  loss:      "b{B bucket}[_bf16|_fp16]", B = the global batch (rows of the gathered features): <= 4096, 16384,
             32768, 65536, "large"; the suffix is the dtype of the features the trainer passes (its training dtype),
             none for fp32. The 16-bit classes are judged on the 16-bit rows of the bench: there ClipLoss runs
             16-bit GEMMs, as our torch path does (pretrain/loss.py), so fp32 rows say nothing about them.

    python -m kernels.auto                      # what auto picks here, as JSON
    python -m kernels.auto --merge FILE [...]   # merge records written on GPU hosts into kernels/records.json
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from ._common import next_pow2
from .attention import MAX_HEAD_DIM

RECORDS = Path(__file__).resolve().parent / "records.json"
N_BUCKETS = (64, 96, 128, 224, 320, 640)  # kernels/attention.py's _TILES keys
B_BUCKETS = (4096, 16384, 32768, 65536)
ATTENTION_IMPLS, LOSS_IMPLS = ("triton", "sdpa"), ("triton", "torch")

# What the model and the loss consult at run time: {"attention": {class: impl}, "loss": {class: impl}}. Set once by
# the trainer (`activate`), read by pretrain/model/attention.py on every call (a dict lookup: dynamo folds it).
_ACTIVE: dict = {"attention": {}, "loss": {}}


def gpu_model(device_name: str) -> str:
    """"NVIDIA H200" -> "H200", "NVIDIA A100-SXM4-80GB" -> "A100"; else the name without the vendor."""
    m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", device_name)
    return m.group(1) if m else device_name.replace("NVIDIA ", "").strip()


def attention_class(n: int, head_dim: int, causal: bool) -> str | None:
    """The attention shape class, or None when the Triton kernel cannot take the head dim."""
    block_d = max(32, next_pow2(head_dim))
    if block_d > MAX_HEAD_DIM:
        return None
    bucket = next((b for b in N_BUCKETS if n <= b), "large")
    return f"n{bucket}_d{block_d}" + ("_causal" if causal else "")


def loss_class(batch: int, dtype: str = "fp32") -> str:
    """dtype: "fp32", "bf16" or "fp16", the features' dtype."""
    return "b" + str(next((b for b in B_BUCKETS if batch <= b), "large")) + ("" if dtype == "fp32" else f"_{dtype}")


def load_records(path: Path | str = RECORDS) -> dict:
    path = Path(path)
    if not path.is_file():
        return {}
    return json.loads(path.read_text()).get("records", {})


def record_for(device_name: str | None, records: dict | None = None) -> dict | None:
    """The record of this GPU model, or None (CPU, or a GPU nobody benchmarked)."""
    if not device_name:
        return None
    records = load_records() if records is None else records
    return records.get(gpu_model(device_name))


def choose(record: dict | None) -> dict:
    """The tables `activate` takes: the record's choices, validated; {} per op without a record."""
    out = {"attention": {}, "loss": {}}
    for op, impls in (("attention", ATTENTION_IMPLS), ("loss", LOSS_IMPLS)):
        for cls, impl in ((record or {}).get(op) or {}).items():
            if impl not in impls:
                raise ValueError(f"kernels record: {op} class {cls!r} names {impl!r}, expected one of {impls}")
            out[op][cls] = impl
    return out


def activate(tables: dict) -> None:
    _ACTIVE["attention"] = dict(tables.get("attention", {}))
    _ACTIVE["loss"] = dict(tables.get("loss", {}))


def attention_impl(n: int, head_dim: int, causal: bool) -> str:
    """"triton" or "sdpa" for this shape under the active tables (auto)."""
    cls = attention_class(n, head_dim, causal)
    return _ACTIVE["attention"].get(cls, "sdpa") if cls else "sdpa"


def loss_impl(batch: int, dtype: str = "fp32") -> str:
    """"triton" or "torch" for a global batch of `batch` rows of `dtype` features under the active tables (auto)."""
    return _ACTIVE["loss"].get(loss_class(batch, dtype), "torch")


def decide(bench: dict) -> dict:
    """A record from a `kernels.bench` result: per attention shape, triton if ours beat every SDPA backend that
    ran; per loss batch and feature dtype, triton if ours was faster than OpenCLIP's ClipLoss at every D measured
    (or ClipLoss did not run, e.g. out of memory, and ours did). A loss row without a dtype counts as fp32."""
    attention, loss = {}, {}
    for r in bench.get("attention", []):
        cls = attention_class(r["N"], r["D"], r["causal"])
        if cls is None:
            continue
        rows = [x for x in bench["attention"] if (x["N"], x["D"], x["causal"]) == (r["N"], r["D"], r["causal"])]
        ours = [x["ms"] for x in rows if x["impl"] == "ours" and "ms" in x]
        sdpa = [x["ms"] for x in rows if x["impl"].startswith("sdpa") and "ms" in x]
        attention[cls] = "triton" if ours and (not sdpa or ours[0] < min(sdpa)) else "sdpa"
    all_rows = bench.get("loss", [])
    for dtype in sorted({r.get("dtype", "fp32") for r in all_rows}):
        rows = [r for r in all_rows if r.get("dtype", "fp32") == dtype]
        for b in sorted({r["B"] for r in rows}):
            wins = []
            for d in sorted({r["D"] for r in rows if r["B"] == b}):
                ms = {x["impl"]: x.get("ms") for x in rows if (x["B"], x["D"]) == (b, d)}
                wins.append(ms.get("ours") is not None
                            and (ms.get("open_clip") is None or ms["ours"] < ms["open_clip"]))
            loss[loss_class(b, dtype)] = "triton" if wins and all(wins) else "torch"
    return {"device": bench.get("device"), "date": bench.get("date"), "torch": bench.get("torch"),
            "triton": bench.get("triton"), "attention": attention, "loss": loss,
            "evidence": bench.get("summary", {})}


def merge(record_files: list[str], into: Path | str = RECORDS) -> dict:
    """Merge {"records": {model: record}} files into `into` (a later file's model replaces an earlier one)."""
    into = Path(into)
    data = json.loads(into.read_text()) if into.is_file() else {}
    data.setdefault("format", 1)
    records = data.setdefault("records", {})
    for f in record_files:
        records.update(json.loads(Path(f).read_text()).get("records", {}))
    into.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--merge", nargs="+", metavar="FILE", help="record files to merge into --records")
    p.add_argument("--records", default=str(RECORDS))
    args = p.parse_args(argv)
    if args.merge:
        merge(args.merge, args.records)
    import torch
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    record = record_for(name, load_records(args.records))
    print(json.dumps({"device": name or "cpu", "gpu_model": gpu_model(name) if name else None,
                      "record": bool(record), "picks": choose(record),
                      "default": "attention: sdpa, loss: torch (for every class the record does not name)"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
