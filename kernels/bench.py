"""Benchmark the kernels against their baselines on one CUDA GPU, in one process and one run.

    python -m kernels.bench [--out FILE] [--record FILE]

Attention (bf16, fwd+bwd): ours vs each available SDPA backend (cuDNN, flash, efficient) at
ViT-B/16 (256x12x197x64), ViT-L/14 (128x16x257x64) and text (512x8x77x64, causal).
FLOP convention: forward 4*B*H*N*N*D (two matmuls), halved when causal; fwd+bwd = 3.5 x forward
(the backward's five matmuls = 2.5 x forward, recomputation not counted).
CLIP loss (bf16 features, fwd+bwd): ours vs open_clip.loss.ClipLoss at B in {16384, 32768, 65536},
D in {512, 768}, and with fp32 features at D = 512. The trainer passes the features in its training dtype
(pretrain/loss.py): the bf16 rows are a bf16 run's case, the fp32 rows an fp32 run's (our kernel then runs TF32 dots,
kernels/contrastive.py DOT_PRECISION). The summary's `loss_B65536_D512_bf16_meets_target` checks issue 19's target:
<= 0.5x ClipLoss's time and <= 1/30 of its extra memory. Times are triton.testing.do_bench medians after
warm-up (ms) on random inputs; memory is the peak allocated during one fwd+bwd minus what was allocated before it
(GiB). `--record FILE` writes what `train.kernels=auto` should pick on this GPU model (kernels/auto.py `decide`:
per attention shape class ours only if faster than every SDPA backend; per loss batch class ours only if faster
than ClipLoss at every D, judged on the fp32 rows); merge it into kernels/records.json with
`python -m kernels.auto --merge FILE`; the loss classes are per feature dtype (kernels/auto.py). Without CUDA it
prints a message and exits 0.
"""
import argparse
import datetime
import json
import sys

import torch
import torch.nn.functional as F

ATTENTION_SHAPES = {  # name: (B, H, N, D, causal)
    "vit_b16": (256, 12, 197, 64, False),
    "vit_l14": (128, 16, 257, 64, False),
    "text": (512, 8, 77, 64, True),
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
LOSS_SHAPES = [(b, d, "bf16") for b in (16384, 32768, 65536) for d in (512, 768)] + \
    [(b, 512, "fp32") for b in (16384, 32768, 65536)]
TARGET_TIME, TARGET_MEMORY = 0.5, 1 / 30  # issue 19, bf16 at B = 65536, D = 512: ours over ClipLoss


def _measure(fn):
    """(median ms, peak extra GiB) of fn(), or the error that stopped it."""
    import triton.testing

    try:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        return dict(ms=round(ms, 3), peak_gib=round(peak, 3))
    except Exception as e:  # unsupported SDPA backend, OOM, ...: record it, keep going
        torch.cuda.empty_cache()
        return dict(error=str(e).splitlines()[0][:120])


def bench_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from kernels import flash_attention

    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    rows = []
    for name, (B, H, N, D, causal) in ATTENTION_SHAPES.items():
        q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        do = torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16)
        flops = 3.5 * 4 * B * H * N * N * D * (0.5 if causal else 1.0)

        def run(attn):
            return lambda: torch.autograd.grad(attn(q, k, v), (q, k, v), do)

        impls = {"ours": run(lambda q, k, v: flash_attention(q, k, v, causal=causal))}
        for backend, enum in backends.items():
            def sdpa(q, k, v, enum=enum):
                with sdpa_kernel(enum):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            impls[f"sdpa_{backend}"] = run(sdpa)
        for impl, fn in impls.items():
            r = _measure(fn)
            if "ms" in r:
                r["tflops"] = round(flops / r["ms"] / 1e9, 1)
            rows.append(dict(shape=name, B=B, H=H, N=N, D=D, causal=causal, impl=impl, **r))
        q = k = v = do = None  # freed before the next shape
    return rows


def bench_loss():
    from open_clip.loss import ClipLoss

    from kernels import clip_loss

    openclip = ClipLoss()
    rows = []
    for B, D, dtype in LOSS_SHAPES:
        image, text = (F.normalize(torch.randn(B, D, device="cuda"), dim=-1).to(DTYPES[dtype]).requires_grad_()
                       for _ in range(2))
        scale = torch.tensor(30.0, device="cuda", requires_grad=True)
        for impl, loss_fn in (("ours", clip_loss), ("open_clip", openclip)):
            fn = lambda: torch.autograd.grad(loss_fn(image, text, scale), (image, text, scale))  # noqa: E731
            rows.append(dict(B=B, D=D, dtype=dtype, impl=impl, **_measure(fn)))
        image = text = None  # freed before the next shape
    return rows


def _print_table(title, rows, keys):
    print(f"\n{title}")
    print("  ".join(f"{k:>12}" for k in keys))
    for r in rows:
        cells = "  ".join(f"{str(r.get(k, '')):>12}" for k in keys)
        print(cells + (f"  {r['error']}" if "error" in r else ""))


def _summary(result):
    """Our speed-up over the best SDPA backend per shape; our time and memory over OpenCLIP's."""
    out = {}
    for name in ATTENTION_SHAPES:
        ms = {r["impl"]: r["ms"] for r in result["attention"] if r["shape"] == name and "ms" in r}
        sdpa = [v for k, v in ms.items() if k.startswith("sdpa_")]
        if "ours" in ms and sdpa:
            out[f"attention_{name}_speedup_vs_best_sdpa"] = round(min(sdpa) / ms["ours"], 2)
    for B, D, dtype in LOSS_SHAPES:
        r = {x["impl"]: x for x in result["loss"] if (x["B"], x["D"], x["dtype"]) == (B, D, dtype) and "ms" in x}
        if len(r) == 2:
            out[f"loss_B{B}_D{D}_{dtype}_time_ratio"] = round(r["ours"]["ms"] / r["open_clip"]["ms"], 3)
            out[f"loss_B{B}_D{D}_{dtype}_memory_ratio"] = round(
                r["ours"]["peak_gib"] / max(r["open_clip"]["peak_gib"], 1e-9), 4)
    time_ratio, memory_ratio = (out.get(f"loss_B65536_D512_bf16_{k}_ratio") for k in ("time", "memory"))
    if time_ratio is not None:  # issue 19's target for the bf16 loss
        out["loss_B65536_D512_bf16_meets_target"] = time_ratio <= TARGET_TIME and memory_ratio <= TARGET_MEMORY
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the JSON results to this file")
    parser.add_argument("--record", help="write this GPU model's train.kernels=auto record to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernels.bench: no CUDA device, nothing to benchmark "
              "(correctness runs in tests/kernels under TRITON_INTERPRET=1).")
        return 0
    import triton

    torch.manual_seed(0)
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                  triton=triton.__version__,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  flop_convention="attention fwd 4*B*H*N^2*D (x0.5 causal), fwd+bwd x3.5",
                  attention=bench_attention(), loss=bench_loss())
    result["summary"] = _summary(result)
    _print_table("attention fwd+bwd (bf16)", result["attention"],
                 ["shape", "impl", "ms", "tflops", "peak_gib"])
    _print_table("CLIP loss fwd+bwd", result["loss"], ["B", "D", "dtype", "impl", "ms", "peak_gib"])
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if args.record:
        from kernels.auto import decide, gpu_model
        record = {"format": 1, "records": {gpu_model(result["device"]): decide(result)}}
        with open(args.record, "w") as f:
            f.write(json.dumps(record, indent=1, sort_keys=True) + "\n")
        print(f"kernels.bench: auto record for {gpu_model(result['device'])} -> {args.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
