"""End-to-end training-step benchmark: our trainer's step against OpenCLIP's, same process, device, model and batch.

    python -m pretrain.bench [--device cuda|cpu] [--model vit-b-16] [--batch 256] [--zero 2] [--steps 30]
                             [--warmup 8] [--compile on|off] [--clip 0] [--log-every 10] [--out FILE]

Ours: `Trainer.train_step` (pretrain/trainer.py), i.e. what `Trainer.train` runs per step: DeepSpeed ZeRO-1 or -2
(--zero, one or more), bf16 on CUDA (fp32 on a CPU), train.compile, train.kernels=auto, train.optimizer=auto
(fused AdamW on CUDA); `--zero master` is ZeRO-0 with train.optimizer=master_adamw (its own fp32 masters and
clipping, pretrain/master_adamw.py), reported as "master_adamw"; then the EMA update, and a host sync every
--log-every steps (`_flush`).
OpenCLIP: `open_clip.create_model(NAME, output_dict=True)` (the tiny model: the same architecture through
`pretrain.model.openclip.openclip_config`), torch.compile, AdamW (fused on CUDA, OpenCLIP's no-decay groups),
bf16 autocast on CUDA (fp32 on a CPU), ClipLoss, the logit-scale clamp, `loss.item()` every --log-every steps.
Gradient clipping (--clip, both sides): 0 = none, OpenCLIP's default; else DeepSpeed's `gradient_clipping` for ours
(which checks the norm on the host, one sync per step) and `clip_grad_norm_` for OpenCLIP. Both get the same random
batch, already on the device (the data pipeline is not measured), lr 5e-4, betas
(0.9, 0.98), eps 1e-6, weight decay 0.2. OpenCLIP runs first and is freed before ours is built.

Timing: on CUDA each side alone (built, warmed, timed, freed); on a CPU (--rounds 4) OpenCLIP and ours stay
alive together and are timed in alternating chunks, so that the changing load of a shared machine weighs on both.
Reported per side: samples/s over --steps timed steps after --warmup steps (compilation happens there), MFU
(3 x forward FLOPs per sample, `Architecture.flops_per_sample`, over the card's dense bf16 peak; None on CPUs and
unknown GPUs), peak memory allocated during the timed steps (CUDA only), and ours/OpenCLIP samples/s as JSON.
On a CPU (`--device cpu`, default model configs/models/tiny.yaml) the ratio measures our host-side overhead.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import itertools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parent.parent
OPENCLIP_NAMES = {"vit-b-16": "ViT-B-16", "vit-b-32": "ViT-B-32", "vit-l-14": "ViT-L-14"}
LR, BETAS, EPS, WD = 5e-4, (0.9, 0.98), 1e-6, 0.2
MASTER = "master"  # --zero entry: ZeRO-0 with train.optimizer=master_adamw


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _batch(arch, batch: int, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """Random images and token rows (ids below the end-of-text id, which is the largest id, then padding 0)."""
    g = torch.Generator().manual_seed(seed)
    v, t = arch.vision, arch.text
    images = torch.randn(batch, 3, v.image_size, v.image_size, generator=g)
    texts = torch.randint(1, t.vocab - 1, (batch, t.context), generator=g)
    ends = torch.randint(4, t.context, (batch,), generator=g)
    cols = torch.arange(t.context)
    texts = torch.where(cols[None] < ends[:, None], texts, torch.zeros_like(texts))
    texts[torch.arange(batch), ends] = t.vocab - 1
    return images.to(device, dtype), texts.to(device)


def _peak_tflops(device: torch.device) -> float | None:
    from .trainer import PEAK_TFLOPS
    if device.type != "cuda":
        return None
    return next((v for k, v in PEAK_TFLOPS.items() if k in torch.cuda.get_device_name(device)), None)


class Side:
    """One side of the comparison, built and ready: `step()` runs one training step, `sync()` waits for the host
    values a logging step reads, `close()` releases it."""

    def __init__(self, step, sync, info: dict, close=None):
        self.step, self.sync, self.info, self._close = step, sync, info, close

    def close(self) -> None:
        if self._close:
            self._close()


def _run(side: Side, n: int, sync_every: int, device: torch.device) -> float:
    """Seconds for n steps, with a host sync every sync_every steps and at the end."""
    _sync(device)
    t0 = time.perf_counter()
    for i in range(n):
        side.step()
        if (i + 1) % sync_every == 0:
            side.sync()
    side.sync()
    _sync(device)
    return time.perf_counter() - t0


def _warm(side: Side, args, device: torch.device) -> None:
    side.info["warmup_s"] = round(_run(side, args.warmup, args.log_every, device), 2)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2) if device.type == "cuda" else None


# ---- OpenCLIP ------------------------------------------------------------------------------------------------
def openclip_model(model_name: str, arch):
    import open_clip
    if model_name in OPENCLIP_NAMES:
        return open_clip.create_model(OPENCLIP_NAMES[model_name], output_dict=True)
    from open_clip.model import CLIP as OpenCLIP

    from .model.openclip import openclip_config
    cfg = openclip_config(arch)
    return OpenCLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], output_dict=True)


def openclip_side(args, arch, device: torch.device) -> Side:
    from open_clip.loss import ClipLoss
    torch.manual_seed(0)
    model = openclip_model(args.model, arch).to(device)
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
              {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": WD}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS, **({"fused": True} if device.type == "cuda" else {}))
    params = [p for _, p in named]
    loss_fn = ClipLoss()
    run = torch.compile(model) if args.compile == "on" else model
    images, texts = _batch(arch, args.batch, device, torch.float32)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    state = {"loss": None}

    def step():
        with autocast:
            out = run(images, texts)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip:
            torch.nn.utils.clip_grad_norm_(params, args.clip)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        state["last"] = loss

    def sync():
        state["loss"] = state["last"].item()

    info = dict(params=sum(p.numel() for p in model.parameters()), compile=args.compile,
                precision="bf16 autocast" if device.type == "cuda" else "fp32",
                optimizer="AdamW(fused=True)" if device.type == "cuda" else "AdamW", last_loss=state)
    return Side(step, sync, info)


# ---- ours -------------------------------------------------------------------------------------------------------
class _Loader:
    """Stands in for the webdataset loader: the benchmark feeds its own batches to Trainer.train_step."""
    skipped: dict = {}
    epoch = 0

    def __init__(self, *args, **kwargs):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def __iter__(self):
        raise RuntimeError("pretrain.bench feeds the trainer its own batches")


@contextlib.contextmanager
def _synthetic_data(vocab: int):
    """Trainer.__init__ without shards or a tokenizer file: the data pieces are replaced, nothing else."""
    from . import trainer as T

    class Tok:
        kind = "synthetic"

        def __init__(self, path, context):
            self.vocab_size, self.sha256, self.model_path = vocab, "synthetic", None

    patches = {"load_tokenizer": Tok, "load_shards": lambda spec: ["synthetic"], "TrainLoader": _Loader}
    if hasattr(T, "count_samples"):
        patches["count_samples"] = lambda shards: 0
    with mock.patch.multiple(T, **patches):
        yield


def _run_config(args, out_dir: str, optimizer: str = "auto"):
    from .arch import Architecture
    from .config import DataConfig, RunConfig, TrainConfig
    arch = Architecture.load(args.arch_file)
    train = TrainConfig(out_dir=out_dir, steps=10 ** 6, micro_batch=args.batch, lr=LR, warmup=10,
                        weight_decay=WD, betas=BETAS, eps=EPS, log_every=args.log_every, compile=args.compile,
                        kernels="auto", optimizer=optimizer, fingerprints=False, fp8=args.fp8)
    return RunConfig(model=arch, data=DataConfig(shards="synthetic", tokenizer="synthetic", workers=0), train=train)


def side_name(zero) -> str:
    """The result key of one --zero entry: zero1, zero2, master_adamw."""
    return "master_adamw" if zero == MASTER else f"zero{zero}"


def ours_side(args, arch, device: torch.device, zero) -> Side:
    """zero: 1 or 2 (train.optimizer=auto under DeepSpeed ZeRO), or MASTER (ZeRO-0, train.optimizer=master_adamw:
    the same bf16 and gradient_clipping keys, which that optimizer takes over from DeepSpeed)."""
    from .growth_loop import close
    from .trainer import Trainer
    bf16 = device.type == "cuda"
    ds_config = {"zero_optimization": {"stage": 0 if zero == MASTER else zero}, "gradient_clipping": args.clip,
                 "bf16": {"enabled": bf16}}
    stack = contextlib.ExitStack()
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="growclip-bench-"))
    stack.enter_context(_synthetic_data(arch.text.vocab))
    trainer = Trainer(_run_config(args, tmp, "master_adamw" if zero == MASTER else "auto"), ds_config)
    it, state = itertools.repeat(_batch(arch, args.batch, device, trainer.dtype)), {"loss": None}

    def step():
        state["last"] = trainer.train_step(it)

    def sync():
        trainer._flush()
        state["loss"] = state["last"]["loss"]

    def release():
        close(trainer)
        stack.close()

    info = dict(params=sum(p.numel() for p in trainer.engine.module.parameters()), zero=zero,
                precision=("bf16 (master_adamw)" if zero == MASTER else "bf16 (DeepSpeed)") if bf16 else "fp32",
                compile=trainer.compiled, kernels=trainer.kernels, fp8=trainer.fp8_layers,
                optimizer=trainer.optimizer_kind, ema=True, last_loss=state)
    side = Side(step, sync, info, release)
    side.trainer = trainer  # pretrain.profile_step times its phases
    return side


def _report(side: Side, samples: int, seconds: float, args, arch, peak: float | None) -> dict:
    r = {k: v for k, v in side.info.items() if k != "last_loss"}
    sps = samples / seconds
    r.update(loss=side.info["last_loss"]["loss"], samples_per_s=round(sps, 1),
             mfu=round(3 * arch.flops_per_sample() * sps / (peak * 1e12), 4) if peak else None)
    return r


def sequential(args, arch, device: torch.device, peak) -> tuple[dict, dict]:
    """OpenCLIP alone (built, warmed, timed, freed), then each of our ZeRO stages alone: peak memory per side."""
    results = {}
    for name, build in [("open_clip", lambda: openclip_side(args, arch, device))] + \
            [(side_name(z), lambda z=z: ours_side(args, arch, device, z)) for z in args.zeros]:
        side = build()
        _warm(side, args, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = _run(side, args.steps, args.log_every, device)
        results[name] = _report(side, args.steps * args.batch, seconds, args, arch, peak)
        results[name]["peak_gib"] = _peak_gib(device)
        side.close()
        del side
        _free(device)
        print(json.dumps({name: results[name]}), flush=True)
    oc = results.pop("open_clip")
    for r in results.values():
        r["ratio_vs_open_clip"] = round(r["samples_per_s"] / oc["samples_per_s"], 3)
    return oc, results


def interleaved(args, arch, device: torch.device, peak) -> tuple[dict, dict]:
    """OpenCLIP and one of our ZeRO stages alive together, timed in alternating chunks (ABBA...), so that a load
    that changes during the run (a shared machine) weighs on both alike; the ratio is the per-pair total. No peak
    memory (both sides are resident)."""
    oc = openclip_side(args, arch, device)
    _warm(oc, args, device)
    chunk = max(1, args.steps // args.rounds)
    ours_results, oc_seconds, oc_samples = {}, 0.0, 0
    for z in args.zeros:
        ours = ours_side(args, arch, device, z)
        _warm(ours, args, device)
        t = {"oc": 0.0, "ours": 0.0}
        for r in range(args.rounds):
            order = (("oc", oc), ("ours", ours)) if r % 2 == 0 else (("ours", ours), ("oc", oc))
            for key, side in order:
                t[key] += _run(side, chunk, args.log_every, device)
        n = chunk * args.rounds * args.batch
        res = _report(ours, n, t["ours"], args, arch, peak)
        res["open_clip_samples_per_s"] = round(n / t["oc"], 1)
        res["ratio_vs_open_clip"] = round(t["oc"] / t["ours"], 3)
        res["peak_gib"] = None
        ours_results[side_name(z)] = res
        oc_seconds, oc_samples = oc_seconds + t["oc"], oc_samples + n
        ours.close()
        del ours
        _free(device)
        print(json.dumps({side_name(z): res}), flush=True)
    oc_result = _report(oc, oc_samples, oc_seconds, args, arch, peak)
    oc_result["peak_gib"] = None
    oc.close()
    return oc_result, ours_results


# ---- driver -----------------------------------------------------------------------------------------------------
def _dist_env() -> None:
    for k, v in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(k, v)
    if "MASTER_PORT" not in os.environ:
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default=None, help="vit-b-16 | vit-b-32 | vit-l-14 | tiny | a file under "
                   "configs/models (default: vit-b-16 on CUDA, tiny on a CPU)")
    p.add_argument("--batch", type=int, default=None, help="default: 256 on CUDA, 64 on a CPU")
    p.add_argument("--zero", default="2", help="ZeRO stage(s) of our side, comma-separated (1, 2, master: ZeRO-0 "
                   "with train.optimizer=master_adamw)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 30 on CUDA, 20 on a CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 8 on CUDA, 3 on a CPU)")
    p.add_argument("--compile", choices=["on", "off"], default="on")
    p.add_argument("--log-every", type=int, default=10, help="host sync every N steps, both sides")
    p.add_argument("--rounds", type=int, default=None, help="1: time each side alone (peak memory per side; "
                   "default on CUDA); N > 1: keep both alive and time N alternating chunks each (default 4 on a CPU, "
                   "where a shared machine's load changes during the run)")
    p.add_argument("--clip", type=float, default=0.0, help="gradient clipping max norm, both sides (0: none)")
    p.add_argument("--fp8", action="store_true", help="our side with train.fp8 (torchao float8 linear layers; "
                   "refused without an sm_89+ GPU)")
    p.add_argument("--out", help="also write the JSON result here")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    args.model = args.model or ("vit-b-16" if cuda else "tiny")
    args.batch = args.batch or (256 if cuda else 64)
    args.steps = args.steps or (30 if cuda else 20)
    args.warmup = args.warmup or (8 if cuda else 3)
    args.rounds = args.rounds or (1 if cuda else 4)
    f = Path(args.model)
    args.arch_file = str(f if f.suffix in (".yaml", ".yml", ".json") else ROOT / "configs" / "models" / f"{f}.yaml")
    args.model = f.stem
    args.zeros = [z if z == MASTER else int(z) if z.isdigit() else z for z in str(args.zero).split(",")]
    if any(z not in (1, 2, MASTER) for z in args.zeros):
        p.error(f"--zero takes stages 1, 2 and/or {MASTER}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("pretrain.bench: no CUDA device; use --device cpu", file=sys.stderr)
        return 2
    os.chdir(ROOT)
    _dist_env()
    from .arch import Architecture
    arch = Architecture.load(args.arch_file)
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    peak = _peak_tflops(device)
    import deepspeed
    import open_clip
    result = {"what": "train step samples/s, ours (DeepSpeed trainer) vs OpenCLIP, same process, device, batch",
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} "
              f"cores visible, {torch.get_num_threads()} torch threads)",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__, "deepspeed": deepspeed.__version__, "open_clip": open_clip.__version__,
              "model": args.model, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
              "log_every": args.log_every, "clip": args.clip, "flops_per_sample_fwd": arch.flops_per_sample(),
              "peak_tflops": peak, "rounds": args.rounds,
              "timing": "sequential (each side alone)" if args.rounds == 1 else
              f"interleaved: OpenCLIP and ours alive together, {args.rounds} alternating chunks each"}
    result["open_clip_side"], result["ours"] = (sequential if args.rounds == 1 else interleaved)(args, arch, device,
                                                                                                 peak)
    # the headline: our best ZeRO stage, by its ratio to the OpenCLIP timed beside it (on a CPU each stage has its
    # own interleaved OpenCLIP chunks; sequentially, one OpenCLIP run, so this is also the fastest stage)
    result["ratio"] = max(r["ratio_vs_open_clip"] for r in result["ours"].values())
    text = json.dumps(result, indent=1)
    print(text)
    print(f"ratio ours/OpenCLIP samples/s ({args.model}, batch {args.batch}, {args.device}): {result['ratio']}")
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
