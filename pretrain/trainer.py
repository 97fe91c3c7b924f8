"""The DeepSpeed training loop: data -> CLIP -> gathered contrastive loss -> engine step -> metrics, checkpoints.

Everything that can be wrong with a config, a checkpoint or a layout is checked in `Trainer.__init__`, before
the first step. Components with state (engine, data loader, EMA) are saved and restored together, so a resume
continues with the exact next sample and the exact next loss.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import deepspeed
import deepspeed.comm as dist
import torch
from tqdm import tqdm

from . import checkpoint as ckpt
from .arch import Architecture
from .config import ConfigError, RunConfig
from .data.manifest import count_samples, load_shards
from .data.pipeline import TrainLoader
from .data.tokenizer import Tokenizer
from .ema import EMA
from .loss import ContrastiveLoss
from .model import CLIP, set_backend
from .model.clip import logit_scale_value
from .optim import cosine_with_warmup, param_groups
from .parallel.cuts import shard, split_of
from .parallel.groups import init_distributed, init_groups
from .parallel.layout import Layout
from .parallel.pipeline import CLIPPipeline, full_state
from .parallel.pipeline_plan import describe
from .parallel.tensor import apply_tensor_parallel

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, for the MFU estimate


def prepare_ds_config(ds_config: dict, cfg: RunConfig, universal: bool) -> dict:
    ds = json.loads(json.dumps(ds_config))
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if key in ds:
            raise ConfigError(f"deepspeed config sets {key!r}; batch sizes come from train.micro_batch and "
                              f"train.grad_accum in the run config, remove it")
    ds["train_micro_batch_size_per_gpu"] = cfg.train.micro_batch
    ds["gradient_accumulation_steps"] = cfg.train.grad_accum
    ds["zero_allow_untested_optimizer"] = True  # torch AdamW: FusedAdam has no CPU build
    ds.setdefault("steps_per_print", 10 ** 9)
    if universal:
        ds.setdefault("checkpoint", {})["load_universal"] = True
    if cfg.parallel.pp > 1:  # DeepSpeed's activation partitioning over TP ranks assumes that only the first
        # tensor a stage sends carries a gradient; ours sends both towers' tokens, so it is turned off
        ds.setdefault("pipeline", {}).update(pipe_partitioned=False, grad_partitioned=False)
    return ds


def batch_fingerprint(images: torch.Tensor, texts: torch.Tensor) -> str:
    h = hashlib.sha1(texts.cpu().numpy().tobytes())
    h.update(images.float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def uses_triton(cfg: RunConfig) -> bool:
    """train.kernels: "triton", or "auto" on a GPU."""
    return cfg.train.kernels == "triton" or (cfg.train.kernels == "auto" and torch.cuda.is_available())


def check_kernel_head_dims(arch: Architecture) -> None:
    """The Triton attention kernel takes head dims up to MAX_HEAD_DIM; say so before any work, naming the tower."""
    from kernels.attention import MAX_HEAD_DIM
    for name in ("vision", "text", "shared"):
        t = getattr(arch, name)
        if (name != "shared" or t.layers) and t.attn_head_dim > MAX_HEAD_DIM:
            raise ConfigError(f"model {name}.head_dim is {t.attn_head_dim} (width {t.width}, heads {t.heads}, "
                              f"head_dim {t.head_dim}); the Triton attention kernel takes at most {MAX_HEAD_DIM}: "
                              f"add heads, or set train.kernels=torch")


class Trainer:
    """`grow_at_samples`: with data.refresh_every, stop (and save) once the re-read data holds this many samples,
    so that pretrain/growth_loop.py can grow the model (`data_grew` tells it why the run stopped)."""

    def __init__(self, cfg: RunConfig, ds_config: dict, resume: str | None = None,
                 grow_at_samples: int | None = None):
        self.cfg = cfg
        self.out = Path(cfg.train.out_dir)
        resume_dir = ckpt.resume_dir(self.out, resume)
        client = ckpt.read_client_state(resume_dir) if resume_dir else None
        self.arch = Architecture.from_dict(client["architecture"]) if client else cfg.model
        self.tokenizer = Tokenizer(cfg.data.tokenizer, self.arch.text.context)
        self._check_compatible(client)
        if cfg.train.eval_every:  # a bad task name stops the run here, not at the first eval
            from eval.data import EvalDataError
            from eval.tasks import parse as parse_eval_tasks
            try:
                parse_eval_tasks(cfg.train.eval_tasks)
            except EvalDataError as e:
                raise ConfigError(f"train.eval_tasks: {e}") from e
        ds_config = prepare_ds_config(ds_config, cfg, universal=bool(resume_dir and ckpt.is_universal(resume_dir)))
        self.shards = load_shards(cfg.data.shards)
        self.data_samples = count_samples(self.shards)  # |D|, from the manifests
        self.grow_at_samples, self.data_grew = grow_at_samples, False

        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.layout = Layout.for_world(world, cfg.parallel.tp, cfg.parallel.pp)
        self.layout.validate(self.arch, ds_config.get("zero_optimization", {}).get("stage", 0))

        init_distributed()
        self.rank = dist.get_rank()
        mpu, topology = init_groups(self.layout)
        self.dp_rank, self.tp_rank = mpu.get_data_parallel_rank(), mpu.get_tensor_model_parallel_rank()
        self.dp_group, self.tp_group = mpu.get_data_parallel_group(), mpu.get_tensor_model_parallel_group()
        self.pp_rank, self.pp_group = mpu.get_pipeline_model_parallel_rank(), mpu.get_pipeline_model_parallel_group()
        self.reads_data = self.pp_rank == 0  # only the first stage feeds the pipeline
        self.device = (torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
                       else torch.device("cpu"))
        self.use_triton = uses_triton(cfg)
        self.loss_fn = ContrastiveLoss(self.dp_group, self.use_triton)  # fp32, gathered over data parallelism
        set_backend("triton" if self.use_triton else "torch")
        if self.use_triton:
            check_kernel_head_dims(self.arch)

        torch.manual_seed(cfg.train.seed)  # identical full initial weights on every rank, then each takes its shard
        model = CLIP(self.arch)
        self.params = sum(p.numel() for p in model.parameters())
        model = apply_tensor_parallel(model, self.layout.tp)
        self.uc_info = ckpt.universal_checkpoint_info([n for n, _ in model.named_parameters()], self.arch.text.vocab,
                                                      self.layout.tp)
        if self.layout.pp > 1:
            if self.rank == 0:
                print(describe(self.arch, self.layout.pp), flush=True)
            model = CLIPPipeline(model, topology, self.loss_fn)
            mpu = None  # the pipeline engine takes its groups from the module's topology (same ranks)
        optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr,
                                      betas=cfg.train.betas, eps=cfg.train.eps)
        scheduler = cosine_with_warmup(optimizer, cfg.train.warmup, cfg.train.steps, cfg.train.lr, cfg.train.min_lr)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                    config=ds_config, mpu=mpu)
        self.dtype = (torch.bfloat16 if self.engine.bfloat16_enabled() else
                      torch.float16 if self.engine.fp16_enabled() else torch.float32)
        self.loader = TrainLoader(self.shards, self.tokenizer, self.arch.vision.image_size, cfg.train.micro_batch,
                                  dp_rank=self.dp_rank, dp_world=self.layout.dp, workers=cfg.data.workers,
                                  seed=cfg.train.seed, shuffle_buffer=cfg.data.shuffle_buffer,
                                  max_pixels=cfg.data.max_pixels, scale=(cfg.data.crop_scale_min, 1.0),
                                  order=cfg.data.order)
        self.ema = EMA(cfg.train.ema_decay)
        self.step = 0
        self.samples_seen = 0  # training pairs consumed over the whole run, through every growth
        self.growth_history: list = []
        self._fingerprints: list[str] = []
        if resume_dir:
            self._restore(resume_dir, client)

    # ---- set-up checks --------------------------------------------------------------------------------
    def _check_compatible(self, client: dict | None) -> None:
        if self.arch.text.vocab != self.tokenizer.vocab_size:
            raise ConfigError(f"model text.vocab={self.arch.text.vocab} but the tokenizer "
                              f"{self.cfg.data.tokenizer} has {self.tokenizer.vocab_size} ids")
        if client and client["tokenizer_sha256"] != self.tokenizer.sha256:
            raise ckpt.CheckpointError(
                f"tokenizer {self.cfg.data.tokenizer} (sha256 {self.tokenizer.sha256[:12]}) differs from the one "
                f"the checkpoint was trained with ({client['tokenizer_sha256'][:12]})")

    def _restore(self, tag_dir: Path, client: dict) -> None:
        universal = ckpt.is_universal(tag_dir)
        # universal: the weights come from zero/<param>/fp32.pt; the module file is of another layout
        load_path, _ = self.engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name,
                                                   load_optimizer_states=True, load_lr_scheduler_states=True,
                                                   load_module_strict=not universal)
        if load_path is None:
            raise ckpt.CheckpointError(f"DeepSpeed could not load {tag_dir}")
        self.step = client["step"]
        self.samples_seen = client.get("samples", self.step * self.cfg.train.micro_batch * self.cfg.train.grad_accum
                                       * self.layout.dp)  # older checkpoints: as if the layout never changed
        self.growth_history = list(client.get("growth_history", []))
        if client.get("ema"):
            ema = client["ema"]
            mine = {n for n, _ in self.engine.module.named_parameters()}  # this stage's share
            self.ema.load_state_dict({"decay": ema["decay"], "shadow": {
                n: shard(v, split_of(n), self.tp_rank, self.layout.tp) for n, v in ema["shadow"].items()
                if n in mine}})
        if client.get("data"):  # one position per data-parallel rank; the loader picks its own, or warns and
            self.loader.load_state_dict(client["data"])  # starts the next epoch if the data layout changed

    # ---- the loop ---------------------------------------------------------------------------------------
    def _full_params(self):
        module = self.engine.module
        if self.engine.zero_optimization_stage() == 3:
            params = list(module.parameters())
            with deepspeed.zero.GatheredParameters(params):
                return [(n, p.detach().clone()) for n, p in module.named_parameters()]
        return list(module.named_parameters())

    def _next_batch(self, it) -> tuple[torch.Tensor, torch.Tensor]:
        images, texts = next(it)
        self._fingerprints.append(batch_fingerprint(images, texts))
        return images.to(self.device, self.dtype), texts.to(self.device)

    def _step(self, it) -> float:
        """One optimizer step (grad_accum micro-batches); returns the loss averaged over them and over DP."""
        if self.layout.pp > 1:  # the pipeline engine runs its schedule; the loss arrives on every rank
            return self.engine.train_batch(data_iter=it).item()
        losses = []
        for _ in range(self.cfg.train.grad_accum):
            loss = self.loss_fn(self.engine(*self._next_batch(it)))
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.detach())
        loss = torch.stack(losses).mean()
        dist.all_reduce(loss, group=self.dp_group)
        return loss.item() / self.layout.dp

    def _pipeline_feed(self, it):
        """(inputs, labels) per micro-batch, as PipelineEngine reads them: the first stage feeds the batch, the
        last stage only reads the (unused) labels; the contrastive loss needs none."""
        labels = torch.zeros(1, device=self.device)
        while True:
            yield (self._next_batch(it) if self.reads_data else None), labels

    def train(self) -> list[dict]:
        cfg = self.cfg.train
        writer = None
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(self.out / "tb"))
            (self.out / "run_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
        bar = tqdm(total=cfg.steps, initial=self.step, disable=self.rank != 0, desc="train", dynamic_ncols=True)
        it = self._pipeline_feed(iter(self.loader)) if self.layout.pp > 1 else iter(self.loader)
        history, window, t0 = [], [], time.time()
        samples_per_step = cfg.micro_batch * cfg.grad_accum * self.layout.dp
        peak = next((v for k, v in PEAK_TFLOPS.items() if self.device.type == "cuda"
                     and k in torch.cuda.get_device_name()), 0.0)
        last = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
        while self.step < last:
            self._fingerprints = []
            loss = self._step(it)
            self.step += 1
            self.samples_seen += samples_per_step
            self.ema.update(self._full_params())
            all_fps = [None] * dist.get_world_size()  # ranks that do not read data (later stages) give []
            dist.all_gather_object(all_fps, self._fingerprints)
            norm = self.engine.get_global_grad_norm()
            record = {"step": self.step, "samples": self.samples_seen, "data_samples": self.data_samples,
                      "gflops": self.gflops, "params": self.params, "loss": loss, "lr": self.engine.get_lr()[0],
                      "grad_norm": None if norm is None else float(norm), "batches": all_fps}
            history.append(record)
            window.append(loss)
            if self.step % cfg.log_every == 0 or self.step == last:
                record["skipped"], record["logit_scale"] = self._skipped(), self._logit_scale()
                self._log(writer, window, time.time() - t0, samples_per_step, peak, record)
                window, t0 = [], time.time()
            if self.rank == 0:
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                self._evaluate(writer)
            if self.cfg.data.refresh_every and self.step % self.cfg.data.refresh_every == 0:
                self._refresh_data()
            if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == last or self.data_grew:
                self.save()
            if self.data_grew:
                break
        bar.close()
        if writer:
            writer.close()
        return history

    def _refresh_data(self) -> None:
        """Re-read data.shards (a manifest that grows while the job runs): rank 0 resolves it, every rank adds
        the new shards to its loader, which keeps its place (pretrain/data/pipeline.py). A spec that cannot be
        read now keeps the current shards, with a warning."""
        answer: list = [None]
        if self.rank == 0:
            try:
                answer = [load_shards(self.cfg.data.shards)]
            except (OSError, ValueError) as e:
                print(f"warning: step {self.step}: data.shards could not be re-read ({e}); keeping "
                      f"{len(self.shards)} shards", flush=True)
        dist.broadcast_object_list(answer, src=0)
        if answer[0] is None or len(answer[0]) == len(self.shards):
            return
        self.loader.add_shards(answer[0])
        self.shards, self.data_samples = answer[0], count_samples(answer[0])
        if self.rank == 0:
            print(f"step {self.step}: the data grew to {len(self.shards)} shards, {self.data_samples} samples",
                  flush=True)
        self.data_grew = bool(self.grow_at_samples and self.data_samples >= self.grow_at_samples)

    @property
    def gflops(self) -> float:
        """Forward GFLOPs per image-text pair of the current architecture."""
        return self.arch.flops_per_sample() / 1e9

    def _skipped(self) -> dict[str, int]:
        """Bad samples skipped so far, by reason, over the whole data stream."""
        if self.cfg.data.order == "global":  # every rank already counts the whole stream
            return dict(self.loader.skipped)
        counts = [None] * self.layout.dp
        dist.all_gather_object(counts, self.loader.skipped, group=self.dp_group)
        total: dict[str, int] = {}
        for c in counts:
            for reason, n in c.items():
                total[reason] = total.get(reason, 0) + n
        return total

    def _logit_scale(self) -> float | None:
        """exp(logit_scale) after this step (None under ZeRO-3, where it is partitioned). At pp > 1 only the
        last stage holds it, so every rank of the pipeline group takes part in one all-reduce."""
        if self.engine.zero_optimization_stage() >= 3:
            return None
        held = dict(self.engine.module.named_parameters()).get("logit_scale")
        value = (logit_scale_value(held.detach()).float().reshape(1) if held is not None  # bf16 engine weights
                 else torch.zeros(1, dtype=torch.float32, device=self.device))
        if self.layout.pp > 1:
            dist.all_reduce(value, group=self.pp_group)
        return value.item()

    def _log(self, writer, window, seconds, samples_per_step, peak_tflops, record: dict) -> None:
        if writer is None:
            return
        sps = len(window) * samples_per_step / max(seconds, 1e-9)
        skipped = record["skipped"]
        scalars = {"train/loss": sum(window) / len(window), "train/lr": self.engine.get_lr()[0],
                   "model/params": record["params"], "model/gflops_per_sample": record["gflops"],
                   "data/samples": record["data_samples"], "train/samples_seen": record["samples"],
                   "train/samples_per_s": sps, "data/skipped": sum(skipped.values())}
        if record["logit_scale"] is not None:
            scalars["train/logit_scale"] = record["logit_scale"]
        if peak_tflops:
            scalars["train/mfu"] = 3 * self.arch.flops_per_sample() * sps / (peak_tflops * 1e12 * self.layout.world)
        for k, v in scalars.items():
            writer.add_scalar(k, v, self.step)
        for reason, n in skipped.items():
            writer.add_scalar(f"data/skipped_{reason}", n, self.step)
        writer.flush()

    def _evaluate(self, writer) -> None:
        """Every rank takes part: each embeds its share of each task on a single-device model (the engine's
        module under ZeRO 0-2 at tp=1, else a full copy gathered from ZeRO-3 partitions / TP shards)."""
        from eval import intrain

        from .data.transforms import eval_transform
        model = intrain.single_device_model(self.engine, self.tp_group, self.pp_group)
        results = intrain.run(model, self.tokenizer, eval_transform(self.arch.vision.image_size),
                              self.cfg.train.eval_tasks, self.cfg.train.eval_limit, dist.get_rank(),
                              dist.get_world_size())
        del model
        if writer is not None:
            for k, v in results.items():
                writer.add_scalar(f"eval/{k}", v, self.step)
            writer.flush()
            with open(self.out / "eval.jsonl", "a") as f:  # not metrics.jsonl: one training record per step there
                f.write(json.dumps({"step": self.step, **results}) + "\n")

    def save(self) -> Path:
        states = [None] * dist.get_world_size()
        dist.all_gather_object(states, (self.reads_data, self.dp_rank, self.loader.state_dict()))
        # one position per data-parallel rank, from the ranks that read data
        data = [s for _, s in sorted({dp: s for reads, dp, s in states if reads}.items())]
        ema = {"decay": self.ema.decay,
               "shadow": full_state(self.ema.shadow.items(), self.arch.text.vocab, self.tp_group, self.pp_group)}
        client = {"architecture": self.arch.to_dict(), "step": self.step, "data": data,
                  "tokenizer_sha256": self.tokenizer.sha256, "ema": ema,
                  "layout": {"tp": self.layout.tp, "pp": self.layout.pp, "dp": self.layout.dp},
                  "growth_history": self.growth_history, "run_config": self.cfg.to_dict(),
                  "samples": self.samples_seen, "data_samples": self.data_samples}
        return ckpt.save(self.engine, self.out / "checkpoints", self.step, client, self.uc_info,
                         self.tokenizer.model_path)
