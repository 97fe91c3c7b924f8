"""Where one training step's time goes: our trainer's step split into phases, beside the same model in plain torch
and OpenCLIP, with torch.profiler tables. The companion of `pretrain.bench` (which only says how fast).

    python -m pretrain.profile_step [--device cuda|cpu] [--model vit-b-16] [--batch 256] [--steps 10] [--clip 0]
                                    [--variants ours,plain,open_clip,ours_compiled] [--budget 240] --out FILE

Variants (each built, warmed, timed, profiled and freed alone; same random batch as pretrain.bench):
  ours           Trainer.train_step under DeepSpeed ZeRO-2, bf16 on CUDA, train.compile off
  ours_compiled  the same with train.compile on (the benchmark's setting; its first steps compile)
  ours_master    Trainer.train_step under ZeRO-0 with train.optimizer=master_adamw (its own fp32 masters, clipping
                 on the device), compile off; ours_master_compiled: with train.compile on
  plain          our CLIP module without DeepSpeed: bf16 autocast, fused torch AdamW, our contrastive loss
  open_clip      OpenCLIP's model, ClipLoss and AdamW, eager
--clip: gradient clipping max norm for every variant (0: none): DeepSpeed's gradient_clipping for ours,
master_adamw's own for ours_master, clip_grad_norm_(foreach) in plain's optimizer step, clip_grad_norm_ for OpenCLIP.
Per variant: ms per step without syncs (the real rate), then ms per phase with a device sync after each phase
(forward+loss, backward, optimizer step, EMA, record), on CUDA the host syncs per step the profiler saw (stream
and device synchronizations: an .item() waits in one; None on CPUs, where nothing waits for a device), and the
profiler's top ops by device time and by host time. Everything goes to one text file (--out) and a JSON beside it.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from . import bench as B


def _ms(fn, device, n: int) -> float:
    """ms per step of n calls of fn, timed as pretrain.bench times a side (no host sync inside)."""
    return B._run(B.Side(fn, lambda: None, {}), n, n, device) * 1e3 / n


def _phased(phases, device, n: int) -> dict:
    """ms per phase (a device sync after each), averaged over n steps."""
    total = dict.fromkeys([name for name, _ in phases], 0.0)
    for _ in range(n):
        for name, fn in phases:
            B._sync(device)
            t0 = time.perf_counter()
            fn()
            B._sync(device)
            total[name] += (time.perf_counter() - t0) * 1e3
    return {k: round(v / n, 2) for k, v in total.items()}


SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize")  # what .item(), .tolist(), bool(t) wait in


def _profile(step, device, n: int = 3) -> dict:
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(n):
            step()
        B._sync(device)
    avg = prof.key_averages()
    dev_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    syncs = sum(e.count for e in avg if e.key in SYNC_EVENTS) - 1  # less the B._sync above
    return {"host_syncs_per_step": round(syncs / n, 2) if device.type == "cuda" else None,
            "by_device": avg.table(sort_by=dev_key, row_limit=25, max_name_column_width=60),
            "by_host": avg.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60)}


def ours(args, arch, device, compiled: bool, zero=2):
    args.compile = "on" if compiled else "off"
    side = B.ours_side(args, arch, device, zero)
    trainer = side.trainer
    batch = B._batch(arch, args.batch, device, trainer.dtype)
    it = itertools.repeat(batch)
    state = {}

    def fwd():
        state["loss"] = trainer.loss_fn(trainer.engine(*trainer._next_batch(it)))

    def record():
        norm = trainer.engine.get_global_grad_norm()
        state["rec"] = (norm.detach().clone() if torch.is_tensor(norm) else norm, trainer.engine.get_lr()[0])

    phases = [("forward+loss", fwd), ("backward", lambda: trainer.engine.backward(state["loss"])),
              ("optimizer step", trainer.engine.step), ("ema", trainer.ema.update), ("record", record)]
    return side, (lambda: trainer.train_step(it)), phases


def plain(args, arch, device):
    from .loss import contrastive_loss
    from .model.clip import CLIP
    from .optim import build_optimizer
    torch.manual_seed(0)
    model = CLIP(arch).to(device)
    opt = build_optimizer(model, "torch_fused" if device.type == "cuda" else "torch", B.LR, B.BETAS, B.EPS, B.WD)
    images, texts = B._batch(arch, args.batch, device, torch.float32)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    state = {}

    def fwd():
        with autocast:
            img, txt, scale = model(images, texts)
        state["loss"] = contrastive_loss(img.float(), txt.float(), scale.float(), group=None, use_triton=False)

    def bwd():
        opt.zero_grad(set_to_none=True)
        state["loss"].backward()

    def opt_step():
        if args.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip, foreach=True)
        opt.step()

    phases = [("forward+loss", fwd), ("backward", bwd), ("optimizer step", opt_step)]

    def step():
        for _, fn in phases:
            fn()
    return B.Side(step, lambda: None, {}), step, phases


def open_clip(args, arch, device):
    args.compile = "off"
    side = B.openclip_side(args, arch, device)
    return side, side.step, [("whole step", side.step)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--variants", default="ours,plain,open_clip,ours_compiled")
    p.add_argument("--clip", type=float, default=0.0, help="gradient clipping max norm, every variant (0: none)")
    p.add_argument("--budget", type=float, default=240, help="seconds; a variant is skipped when less than a "
                   "third of it is left")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    args = B.parse_args(["--device", a.device] + (["--model", a.model] if a.model else []) +
                        (["--batch", str(a.batch)] if a.batch else []) + ["--clip", str(a.clip)])
    B._dist_env()
    from .arch import Architecture
    arch = Architecture.load(args.arch_file)
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    start, text, result = time.time(), [], {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
                                             else "cpu", "model": args.model, "batch": args.batch, "clip": a.clip,
                                             "variants": {}}
    builders = {"ours": lambda: ours(args, arch, device, False),
                "ours_compiled": lambda: ours(args, arch, device, True),
                "ours_master": lambda: ours(args, arch, device, False, B.MASTER),
                "ours_master_compiled": lambda: ours(args, arch, device, True, B.MASTER),
                "plain": lambda: plain(args, arch, device), "open_clip": lambda: open_clip(args, arch, device)}
    for name in a.variants.split(","):
        if time.time() - start > a.budget * 2 / 3:
            result["variants"][name] = "skipped: out of time"
            continue
        t0 = time.time()
        side, step, phases = builders[name]()
        warm = _ms(step, device, a.warmup + (4 if name.endswith("_compiled") else 0))
        ms = _ms(step, device, a.steps)
        r = {"ms_per_step": round(ms, 2), "samples_per_s": round(args.batch * 1e3 / ms, 1),
             "warmup_ms_per_step": round(warm, 1), "phases_ms_synced": _phased(phases, device, max(3, a.steps // 2))}
        tables = _profile(step, device)
        r["host_syncs_per_step"] = tables["host_syncs_per_step"]
        if device.type == "cuda":
            r["peak_gib"] = B._peak_gib(device)
        r["seconds"] = round(time.time() - t0, 1)
        result["variants"][name] = r
        text += [f"===== {name}: {json.dumps(r)}", "--- top ops by device time", tables["by_device"],
                 "--- top ops by host time", tables["by_host"]]
        print(json.dumps({name: r}), flush=True)
        side.close()
        del side, step, phases
        B._free(device)
    Path(a.out).write_text("\n".join(text) + "\n")
    Path(a.out).with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
