"""The DeepSpeed training loop: data -> CLIP -> gathered contrastive loss -> engine step -> metrics, checkpoints.

Everything that can be wrong with a config, a checkpoint or a layout is checked in `Trainer.__init__`, before
the first step. Components with state (engine, data loader, EMA) are saved and restored together, so a resume
continues with the exact next sample and the exact next loss.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import time
from pathlib import Path

import deepspeed
import deepspeed.comm as dist
import torch
from tqdm import tqdm

from . import checkpoint as ckpt
from . import master_adamw, resources
from .arch import Architecture
from .config import ConfigError, RunConfig
from .data.manifest import count_samples, first_missing, load_shards
from .data.pipeline import TrainLoader, start_worker_server
from .data.tokenizer import load_tokenizer
from .ema import EMA
from .fp8 import check_fp8, convert_to_fp8
from .loss import ContrastiveLoss
from .model import CLIP, set_backend
from .model.clip import logit_scale_value
from .optim import build_optimizer, named_groups, optimizer_kind
from .parallel.cuts import shard, split_of
from .parallel.groups import init_distributed, init_groups
from .parallel.layout import Layout
from .parallel.pipeline import CLIPPipeline, full_state
from .parallel.pipeline_plan import describe
from .parallel.tensor import apply_tensor_parallel
from .schedule import build_scheduler, growth_warning, set_lr


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite; raised at the logging or saving step that sees it."""


PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, for the MFU estimate

# Preemption (SIGUSR1 / SIGTERM, e.g. Slurm's `--signal=B:USR1@N` forwarded by slurm/train.sbatch): the handler
# only records the signal. The loop asks every STOP_CHECK_EVERY steps (env GROWCLIP_STOP_CHECK_EVERY) and at
# each logging step whether any rank got one (one all-reduce of an int over all ranks, so every rank stops at
# the same step, whatever the layout); then it saves and stops, and main.py exits with EXIT_PREEMPTED.
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "preempted, checkpoint saved; resume with --resume latest"
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
STOP_CHECK_EVERY = 10
_stop_signal = {"signum": 0}


def _record_stop_signal(signum, frame) -> None:
    _stop_signal["signum"] = signum


def install_stop_handlers() -> dict:
    """Record SIGUSR1/SIGTERM instead of dying (main thread only); returns the previous handlers to restore."""
    _stop_signal["signum"] = 0
    return {s: signal.signal(s, _record_stop_signal) for s in STOP_SIGNALS}


def restore_stop_handlers(previous: dict) -> None:
    for s, h in previous.items():
        signal.signal(s, h)


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
    bf16 = ds.get("bf16")
    if isinstance(bf16, dict) and bf16.get("enabled") and "check_grad_overflow" not in bf16:
        # bf16 has fp32's range: no loss scale to overflow. DeepSpeed's check scans every gradient and syncs the
        # host twice per step (ViT-B/16 on an H200: optimizer step 57 -> 13 ms, docs/perf.md); a non-finite loss
        # stops the run at the next logging or saving step instead (Trainer._flush), before it is saved
        bf16["check_grad_overflow"] = False
    if cfg.parallel.pp > 1:  # DeepSpeed's activation partitioning over TP ranks assumes that only the first
        # tensor a stage sends carries a gradient; ours sends both towers' tokens, so it is turned off
        ds.setdefault("pipeline", {}).update(pipe_partitioned=False, grad_partitioned=False)
    return ds


def remote_reads(data) -> dict:
    """data.read_attempts / data.read_backoff as TrainLoader arguments; unset keys keep the loader's defaults."""
    return {k: getattr(data, k) for k in ("read_attempts", "read_backoff") if getattr(data, k) is not None}


def batch_fingerprint(images: torch.Tensor, texts: torch.Tensor) -> str:
    h = hashlib.sha1(texts.cpu().numpy().tobytes())
    h.update(images.float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def uses_triton(cfg: RunConfig) -> bool:
    """Whether every attention call runs the Triton kernel whatever its shape: train.kernels=triton. Then each
    tower's head dim must fit the kernel (check_kernel_head_dims). Under auto the kernels are picked per op and
    shape class from a recorded benchmark (kernels/auto.py) and never for a head dim the kernel cannot take, so
    auto needs no check; without a record (and on CPUs) auto is SDPA + the torch loss."""
    return cfg.train.kernels == "triton"


def train_dtype(ds_config: dict) -> torch.dtype:
    """The dtype DeepSpeed trains in (weights, activations, the features the loss receives), from its config
    ("bfloat16" is DeepSpeed's other name for the bf16 section); the trainer checks it against the engine."""
    def enabled(*keys):
        return any(isinstance(ds_config.get(k), dict) and ds_config[k].get("enabled") is True for k in keys)
    return torch.bfloat16 if enabled("bf16", "bfloat16") else torch.float16 if enabled("fp16") else torch.float32


DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def kernel_choice(kernels: str, device: torch.device, global_batch: int,
                  dtype: torch.dtype = torch.float32) -> dict:
    """{"attention": backend for pretrain.model.set_backend, "loss": "triton" | "torch", "record": GPU model or
    None} for train.kernels. auto activates this GPU model's record in kernels/records.json (SDPA and the torch
    loss for every shape class it does not name, and everywhere without one); the loss class includes the
    features' dtype (the training dtype)."""
    if kernels != "auto":
        impl = "triton" if kernels == "triton" else "torch"
        return {"attention": impl, "loss": impl, "record": None}
    from kernels import auto, triton_available
    record = auto.record_for(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    tables = auto.choose(record) if record and triton_available() else {"attention": {}, "loss": {}}
    auto.activate(tables)
    return {"attention": "auto" if "triton" in tables["attention"].values() else "torch",
            "loss": auto.loss_impl(global_batch, DTYPE_NAMES[dtype]),
            "record": auto.gpu_model(torch.cuda.get_device_name(device)) if record else None}


def compile_mode(value) -> str:
    """train.compile as "auto" | "on" | "off" (YAML turns on/off into booleans)."""
    mode = {None: "auto", True: "on", False: "off"}.get(value, value) if isinstance(value, (bool, type(None))) \
        else str(value).lower()
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"train.compile must be auto, on or off, got {value!r}")
    return mode


def check_kernel_head_dims(arch: Architecture) -> None:
    """The Triton attention kernel takes head dims up to MAX_HEAD_DIM; say so before any work, naming the tower."""
    from kernels.attention import MAX_HEAD_DIM
    for name in ("vision", "text", "shared"):
        t = getattr(arch, name)
        if (name != "shared" or t.layers) and t.attn_head_dim > MAX_HEAD_DIM:
            raise ConfigError(f"model {name}.head_dim is {t.attn_head_dim} (width {t.width}, heads {t.heads}, "
                              f"head_dim {t.head_dim}); the Triton attention kernel takes at most {MAX_HEAD_DIM}: "
                              f"add heads, or set train.kernels=torch")


def _partition(full: torch.Tensor, param) -> torch.Tensor:
    """This rank's ZeRO-3 partition of a full (TP-local) tensor, as DeepSpeed lays out `param.ds_tensor`: the
    flattened tensor zero-padded to world x partition size, the rank's slice."""
    size = param.ds_tensor.numel()
    flat = full.detach().float().flatten()
    flat = torch.cat([flat, flat.new_zeros(size * param.ds_zero_partition_world_size - flat.numel())])
    start = size * dist.get_rank(group=param.ds_process_group)
    return flat[start:start + size].to(param.ds_tensor.device).clone()


def _unpartition(part: torch.Tensor, param) -> torch.Tensor:
    """The full (TP-local) tensor from every rank's ZeRO-3 partition (collective over the partition group)."""
    parts = [torch.empty_like(part) for _ in range(param.ds_zero_partition_world_size)]
    dist.all_gather(parts, part.contiguous(), group=param.ds_process_group)
    return torch.cat(parts)[:param.ds_numel].view(param.ds_shape)


class Trainer:
    """`grow_at_samples`: with data.refresh_every, stop (and save) once the re-read data holds this many samples,
    so that pretrain/growth_loop.py can grow the model (`data_grew` tells it why the run stopped). `save_at_stop`
    False: no save at the last step (train.stop_after) unless train.save_every asks for one, for a live growth
    (growth/live.py) that writes that step's checkpoint itself. `pause`: {"since": time.perf_counter() at the end of
    the last step before a growth, + what to record}; rank 0 appends it with `pause_s`, the time until the first
    step starts, to OUT/growth_pauses.jsonl (timings; metrics.jsonl stays deterministic)."""

    def __init__(self, cfg: RunConfig, ds_config: dict, resume: str | None = None,
                 grow_at_samples: int | None = None, save_at_stop: bool = True, pause: dict | None = None):
        self.cfg = cfg
        self.out = Path(cfg.train.out_dir)
        resume_dir = ckpt.resume_dir(self.out, resume)
        states = ckpt.read_model_states(resume_dir) if resume_dir else None
        client = states[ckpt.CLIENT_KEY] if states else None
        self.arch = Architecture.from_dict(client["architecture"]) if client else cfg.model
        self.tokenizer = load_tokenizer(cfg.data.tokenizer, self.arch.text.context)
        if cfg.data.workers:  # the loader workers' forkserver imports torch while this set-up goes on
            start_worker_server(self.tokenizer)
        self._check_compatible(client)
        tasks = {"train.eval_tasks": cfg.train.eval_tasks if cfg.train.eval_every else None,
                 "growth.eval_task": cfg.growth.eval_task}  # the search's score; tests/fuzz found it unchecked
        for key, spec in tasks.items():  # a bad task name stops the run here, not at the first eval or search
            if spec is None or (key == "growth.eval_task" and spec == ""):  # "": the search scores the loss only
                continue
            from eval.data import EvalDataError
            from eval.tasks import parse as parse_eval_tasks
            try:
                if not isinstance(spec, str):
                    raise EvalDataError(f"expected a task name, got {spec!r:.60}")
                parse_eval_tasks(spec)
            except EvalDataError as e:
                raise ConfigError(f"{key}: {e}") from e
        ds_config = prepare_ds_config(ds_config, cfg, universal=bool(resume_dir and ckpt.is_universal(resume_dir)))
        try:
            self.shards = load_shards(cfg.data.shards)
            self.data_samples = count_samples(self.shards)  # |D|, from the manifests
        except (ValueError, OSError) as e:  # a missing or malformed manifest or tar, a cycle, a name too long
            raise ConfigError(f"data.shards: {e}") from None
        self.data_samples_first = (client or {}).get("data_samples_first", self.data_samples)  # growth's reference
        self.grow_at_samples, self.data_grew = grow_at_samples, False
        self.preempted = False  # train() stopped for SIGUSR1/SIGTERM after saving (EXIT_PREEMPTED)
        # growth_loop: no save at the segment's last step when a live growth writes the step's checkpoint; the
        # growth pause is timed from the last step before it (pause["since"]) to this trainer's first step
        self.save_at_stop, self.pause, self.last_step_end = save_at_stop, pause, None

        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.layout = Layout.for_world(world, cfg.parallel.tp, cfg.parallel.pp)
        self.layout.validate(self.arch, ds_config.get("zero_optimization", {}).get("stage", 0))

        init_distributed()
        self.rank = dist.get_rank()
        if resume_dir:  # every file DeepSpeed will unpickle, loaded with weights_only=True first (a share per rank)
            ckpt.check_files_collective(resume_dir)
        mpu, topology = init_groups(self.layout)
        self.dp_rank, self.tp_rank = mpu.get_data_parallel_rank(), mpu.get_tensor_model_parallel_rank()
        self.dp_group, self.tp_group = mpu.get_data_parallel_group(), mpu.get_tensor_model_parallel_group()
        self.pp_rank, self.pp_group = mpu.get_pipeline_model_parallel_rank(), mpu.get_pipeline_model_parallel_group()
        self.reads_data = self.pp_rank == 0  # only the first stage feeds the pipeline
        self.device = (torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
                       else torch.device("cpu"))
        check_fp8(cfg.train.fp8, self.device, self.layout.tp)  # before any model is built
        self.dtype = train_dtype(ds_config)
        self.kernels = kernel_choice(cfg.train.kernels, self.device, cfg.train.micro_batch * self.layout.dp,
                                     self.dtype)
        self.use_triton = self.kernels["loss"] == "triton"
        # features in the training dtype, gathered over data parallelism; logits, log-sum-exp and loss in fp32
        self.loss_fn = ContrastiveLoss(self.dp_group, self.use_triton)
        set_backend(self.kernels["attention"])
        if uses_triton(cfg):
            check_kernel_head_dims(self.arch)
        self.compiled = self._compile_wanted(compile_mode(cfg.train.compile),
                                             ds_config.get("zero_optimization", {}).get("stage", 0))
        try:
            self.optimizer_kind = optimizer_kind(cfg.train.optimizer, self.device)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        self.precision = None  # master_adamw's dtype and clipping, taken from the DeepSpeed config
        if self.optimizer_kind == master_adamw.NAME:
            ds_config, self.precision = master_adamw.take_over(ds_config, self.layout.tp, self.layout.pp,
                                                               bool(resume_dir and ckpt.is_universal(resume_dir)))

        torch.manual_seed(cfg.train.seed)  # identical full initial weights on every rank, then each takes its shard
        model = CLIP(self.arch) if resume_dir or not cfg.init_from else self._init_from(cfg.init_from)
        self.params = sum(p.numel() for p in model.parameters())
        model = apply_tensor_parallel(model, self.layout.tp)
        self.fp8_layers = convert_to_fp8(model) if cfg.train.fp8 else 0  # tp = 1 (check_fp8)
        self.uc_info = ckpt.universal_checkpoint_info([n for n, _ in model.named_parameters()], self.arch.text.vocab,
                                                      self.layout.tp)
        if self.layout.pp > 1:
            if self.rank == 0:
                print(describe(self.arch, self.layout.pp), flush=True)
            model = CLIPPipeline(model, topology, self.loss_fn)
            mpu = None  # the pipeline engine takes its groups from the module's topology (same ranks)
        if resume_dir and not ckpt.is_universal(resume_dir):
            ckpt.check_param_order(resume_dir, states, [[n for n, _ in g] for g in named_groups(model)])
        del states
        if self.precision:  # its masters are made on the device, from the weights as the model holds them
            model = master_adamw.cast_parameters(model.to(self.device), self.precision.dtype)
        optimizer = build_optimizer(model, self.optimizer_kind, cfg.train.lr, cfg.train.betas, cfg.train.eps,
                                    cfg.train.weight_decay, self.precision.max_norm if self.precision else 0.0)
        history = (client or {}).get("growth_history", [])  # the re-warms; DeepSpeed restores the position
        scheduler = build_scheduler(optimizer, cfg.train, [h["source_step"] for h in history if "source_step" in h],
                                    cfg.growth.rewarm_steps)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                    config=ds_config, mpu=mpu)
        if self.precision:  # DeepSpeed sees fp32 (master_adamw took bf16 out of its config); the model is 16-bit
            if self.layout.dp == 1:  # ZeRO-0 flattens, "reduces" and copies back every gradient even on one rank
                self.engine.enable_backward_allreduce = False
        else:
            engine_dtype = (torch.bfloat16 if self.engine.bfloat16_enabled() else
                            torch.float16 if self.engine.fp16_enabled() else torch.float32)
            if engine_dtype != self.dtype:  # the loss and the kernel choice assumed self.dtype
                raise ConfigError(f"the DeepSpeed config trains in {engine_dtype}, but its bf16/fp16 sections read "
                                  f"as {self.dtype}: write \"enabled\": true or false there")
        self.loader = TrainLoader(self.shards, self.tokenizer, self.arch.vision.image_size, cfg.train.micro_batch,
                                  dp_rank=self.dp_rank, dp_world=self.layout.dp, workers=cfg.data.workers,
                                  seed=cfg.train.seed, shuffle_buffer=cfg.data.shuffle_buffer,
                                  max_pixels=cfg.data.max_pixels, scale=(cfg.data.crop_scale_min, 1.0),
                                  order=cfg.data.order, **remote_reads(cfg.data))
        self.ema = EMA(cfg.train.ema_decay, cfg.train.ema_warmup)
        self.step = 0
        self.samples_seen = 0  # training pairs consumed over the whole run, through every growth
        self.growth_history: list = []
        self._fingerprints: list[str] = []
        self._pending: list[dict] = []  # this run's records whose loss is still on the device (see _flush)
        self._window: list[float] = []  # flushed losses since the last logging step
        self._bar = None
        if resume_dir:
            self._restore(resume_dir, client)
        if self.rank == 0:  # the records past the start step (a run that went further, then stopped) are redone
            for name, n in ckpt.trim_logs(self.out, self.step).items():
                print(f"trainer: {name}: dropped {n} records after step {self.step}, the step this run starts "
                      f"from", flush=True)
        self.ema.bind(self._ema_sources())  # bound once: the EMA update is two multi-tensor calls per step
        if self.compiled:
            self._compile()
        if self.rank == 0:
            print(f"trainer: kernels attention={self.kernels['attention']} loss={self.kernels['loss']} (record: "
                  f"{self.kernels['record'] or 'none'}), compile={'on' if self.compiled else 'off'}, optimizer="
                  f"{self.optimizer_kind}, fingerprints={'on' if cfg.train.fingerprints else 'off'}, loss features "
                  f"{DTYPE_NAMES[self.dtype]}, fp8={f'{self.fp8_layers} linear layers' if cfg.train.fp8 else 'off'}",
                  flush=True)

    def _init_from(self, spec: dict) -> CLIP:
        """A fresh run's first weights from model.init_from (pretrain/init_from.py); a resume never comes here."""
        from .init_from import build, resolve
        source = resolve(spec)
        if source.arch != self.arch:
            raise ConfigError(f"model.init_from: {source.weights} is {source.arch}, the run config says {self.arch}")
        if self.rank == 0:
            print(f"trainer: model.init_from: step 0 from {source.weights} (tokenizer {source.tokenizer})", flush=True)
        return build(source)

    # ---- set-up checks --------------------------------------------------------------------------------
    def _compile_wanted(self, mode: str, zero_stage: int) -> bool:
        """auto: on for CUDA at pp = 1 below ZeRO-3. The pipeline schedule and ZeRO-3's per-module parameter
        hooks are not traced whole; `on` there is a config error rather than a run with graph breaks."""
        if mode == "off":
            return False
        supported = self.layout.pp == 1 and zero_stage < 3
        if mode == "on" and not supported:
            raise ConfigError(f"train.compile=on needs parallel.pp=1 and ZeRO 0-2 (this run: pp={self.layout.pp}, "
                              f"ZeRO-{zero_stage}); use train.compile=off or auto")
        return supported and (mode == "on" or self.device.type == "cuda")

    def _compile(self) -> None:
        """torch.compile of the model's forward and of the loss, each one graph (fullgraph: a graph break is an
        error), the Triton kernels included as custom ops. The module's own forward is compiled, not the engine
        call: DeepSpeed's forward hooks (timers, ZeRO bookkeeping) stay eager around it, and parameter names and
        the module's state dict are unchanged. Shapes are static (dynamic=False): one graph per micro-batch shape."""
        torch._dynamo.reset()  # graphs of an earlier Trainer in this process (before a growth) are dead weight
        module = self.engine.module
        module.forward = torch.compile(module.forward, fullgraph=True, dynamic=False)
        self.loss_fn = torch.compile(self.loss_fn.__call__, fullgraph=True, dynamic=False)

    def _check_compatible(self, client: dict | None) -> None:
        if self.arch.text.vocab != self.tokenizer.vocab_size:
            raise ConfigError(f"model text.vocab={self.arch.text.vocab} but the tokenizer "
                              f"{self.cfg.data.tokenizer} has {self.tokenizer.vocab_size} ids")
        if client:  # master_adamw's state and DeepSpeed's ZeRO files do not load into each other
            master_adamw.check_resume(client.get("run_config", {}).get("train", {}).get("optimizer"),
                                      self.cfg.train.optimizer, "the checkpoint")
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
        set_lr(self.engine.lr_scheduler)  # the optimizer's saved lr is that of the save before a growth
        self.step = client["step"]
        if self.rank == 0:  # which folder a resume took (tests/faults.py checks it is never a half-written one)
            print(f"trainer: resumed from {tag_dir} at step {self.step}", flush=True)
        self.samples_seen = client.get("samples", self.step * self.cfg.train.micro_batch * self.cfg.train.grad_accum
                                       * self.layout.dp)  # older checkpoints: as if the layout never changed
        self.growth_history = list(client.get("growth_history", []))
        warning = growth_warning(self.cfg.train, self.growth_history, self.step)
        if warning and self.rank == 0:
            print(warning, flush=True)
        if client.get("ema"):
            ema = client["ema"]
            mine = dict(self.engine.module.named_parameters())  # this stage's share
            zero3 = self.engine.zero_optimization_stage() == 3
            shadow = {}
            for n, v in ema["shadow"].items():
                if n in mine:
                    v = shard(v, split_of(n), self.tp_rank, self.layout.tp)
                    shadow[n] = _partition(v, mine[n]) if zero3 else v
            # a checkpoint from before the EMA warm-up has no "t": its EMA took one update per step
            self.ema.load_state_dict({**ema, "shadow": shadow}, step=client["step"])
        if client.get("data"):  # one position per data-parallel rank; the loader picks its own, or warns and
            self.loader.load_state_dict(client["data"])  # starts the next epoch if the data layout changed

    # ---- the loop ---------------------------------------------------------------------------------------
    def _ema_sources(self) -> list[tuple[str, torch.Tensor]]:
        """The tensors this rank holds and the optimizer updates in place: its module parameters (its TP shard of
        its stage), under ZeRO-3 its partition of each (`ds_tensor`, flat)."""
        named = self.engine.module.named_parameters()
        if self.engine.zero_optimization_stage() == 3:
            return [(n, p.ds_tensor) for n, p in named]
        return list(named)

    def _ema_state(self) -> dict:
        """The full EMA with canonical names (collective over DP under ZeRO-3, and over TP and PP)."""
        local = self.ema.shadow.items()
        if self.engine.zero_optimization_stage() == 3:
            params = dict(self.engine.module.named_parameters())
            local = [(n, _unpartition(v, params[n])) for n, v in local]
        return {"decay": self.ema.decay, "t": self.ema.t,
                "shadow": full_state(local, self.arch.text.vocab, self.tp_group, self.pp_group)}

    def _next_batch(self, it) -> tuple[torch.Tensor, torch.Tensor]:
        images, texts = next(it)
        if self.cfg.train.fingerprints:
            self._fingerprints.append(batch_fingerprint(images, texts))
        return images.to(self.device, self.dtype), texts.to(self.device)

    def _step(self, it) -> torch.Tensor:
        """One optimizer step (grad_accum micro-batches). Returns, without a host sync, this rank's loss averaged
        over the micro-batches as a device tensor (at pp > 1 the pipeline's loss, already averaged over DP)."""
        if self.layout.pp > 1:  # the pipeline engine runs its schedule; the loss arrives on every rank
            return self.engine.train_batch(data_iter=it).detach().clone()
        losses = []
        for _ in range(self.cfg.train.grad_accum):
            loss = self.loss_fn(self.engine(*self._next_batch(it)))
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.detach())
        return torch.stack(losses).mean()

    def train_step(self, it) -> dict:
        """The hot path of one step: optimizer step, EMA update, the step's record. Nothing here waits for the
        device: the record's loss (and grad norm) stay tensors until `_flush` at the next logging step."""
        self._fingerprints = []
        loss = self._step(it)
        self.step += 1
        self.ema.update()
        norm = self.engine.get_global_grad_norm()
        record = {"step": self.step, "loss": loss, "lr": self.engine.get_lr()[0],
                  "grad_norm": norm.detach().clone() if torch.is_tensor(norm) else norm}
        if self.cfg.train.fingerprints:  # ranks that do not read data (later stages) give []
            all_fps = [None] * dist.get_world_size()
            dist.all_gather_object(all_fps, self._fingerprints)
            record["batches"] = all_fps
        self._pending.append(record)
        return record

    def _flush(self) -> list[dict]:
        """Resolve the pending records: one all-reduce of their losses over DP and one copy to the host."""
        records, self._pending = self._pending, []
        if not records:
            return records
        losses = torch.stack([r["loss"].float().reshape(()) for r in records])
        if self.layout.pp == 1:
            dist.all_reduce(losses, group=self.dp_group)
        values = losses.tolist()
        bad = [r["step"] for r, v in zip(records, values) if not math.isfinite(v)]
        if bad:
            raise DivergedError(f"the loss is not finite from step {bad[0]} (steps {bad[0]}-{records[-1]['step']} "
                                f"not saved); resume from the last checkpoint under {self.out / 'checkpoints'}, "
                                f"e.g. with a lower train.lr")
        for r, v in zip(records, values):
            r["loss"] = v / self.layout.dp if self.layout.pp == 1 else v
            if r["grad_norm"] is not None:
                r["grad_norm"] = float(r["grad_norm"])
        self._window += [r["loss"] for r in records]
        if self.rank == 0:  # one record per step, written at the logging (or saving) step
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in records))
            if self._bar is not None:
                self._bar.update(len(records))
                self._bar.set_postfix(loss=f"{records[-1]['loss']:.4f}")
        return records

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
            writer = SummaryWriter(str(self.out / "tb"), purge_step=self.step + 1)  # hides events past the start
            (self.out / "run_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
        bar = self._bar = tqdm(total=cfg.steps, initial=self.step, disable=self.rank != 0, desc="train",
                               dynamic_ncols=True)
        it = self._pipeline_feed(iter(self.loader)) if self.layout.pp > 1 else iter(self.loader)
        history, self._window, t0 = [], [], time.time()
        samples_per_step = cfg.micro_batch * cfg.grad_accum * self.layout.dp
        peak = next((v for k, v in PEAK_TFLOPS.items() if self.device.type == "cuda"
                     and k in torch.cuda.get_device_name()), 0.0)
        last = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
        check_every = int(os.environ.get("GROWCLIP_STOP_CHECK_EVERY", STOP_CHECK_EVERY))
        # a signal that came before the first step (during a growth, the set-up): what this trainer started from
        # is on disk (the last save, or the grown checkpoint that --resume latest picks up), so stop unsaved
        self.preempted = self.step < last and self._stop_requested()
        while self.step < last and not self.preempted:
            if self.pause is not None:
                self._record_pause(time.perf_counter())
            record = self.train_step(it)  # loss still on the device
            self.last_step_end = time.perf_counter()
            self.samples_seen += samples_per_step
            record.update({"samples": self.samples_seen, "data_samples": self.data_samples,
                           "gflops": self.gflops, "params": self.params})
            history.append(record)
            if self.step % cfg.log_every == 0 or self.step == last:  # the loop's host syncs: here and in save()
                record["skipped"], record["logit_scale"] = self._skipped(), self._logit_scale()
                self._flush()
                self._log(writer, self._window, time.time() - t0, samples_per_step, peak, record)
                self._window, t0 = [], time.time()
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                self._evaluate(writer)
            if self.cfg.data.refresh_every and self.step % self.cfg.data.refresh_every == 0:
                self._refresh_data()
            check = self.step < last and (self.step % check_every == 0 or self.step % cfg.log_every == 0)
            self.preempted = check and self._stop_requested()
            if ((cfg.save_every and self.step % cfg.save_every == 0) or (self.step == last and self.save_at_stop)
                    or self.data_grew or self.preempted):
                self.save()
            if self.preempted and self.rank == 0:
                print(f"\ntrainer: stopped by signal {_stop_signal['signum'] or 'on another rank'} after step "
                      f"{self.step}, checkpoint saved; exit {EXIT_PREEMPTED}, resume with --resume latest",
                      flush=True)
            if self.data_grew or self.preempted:
                break
        bar.close()
        self._bar = None
        if writer:
            writer.close()
        return history

    def _record_pause(self, now: float) -> None:
        """Rank 0 appends the growth's record, with what every rank holds now (pretrain/resources.py: memory,
        descriptors, threads, process groups, descendant processes; one all-gather), to OUT/growth_pauses.jsonl.
        The heap's free pages go back to the OS first: the set-up freed the grown checkpoint's load buffers, which
        glibc would keep (docs/reliability.md, "Many growths in one process")."""
        pause, self.pause = self.pause, None
        resources.release_heap()
        held = [None] * dist.get_world_size()
        dist.all_gather_object(held, resources.snapshot())
        if self.rank != 0:
            return
        record = {"step": self.step, "pause_s": round(now - pause.pop("since"), 3), **pause, "resources": held}
        print(f"trainer: growth pause after step {self.step}: {record['pause_s']:.1f} s "
              f"({', '.join(f'{k} {v}' for k, v in pause.items())})", flush=True)
        with open(self.out / "growth_pauses.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _stop_requested(self) -> bool:
        """Whether any rank got SIGUSR1/SIGTERM (collective over all ranks: call it at the same step on each)."""
        flag = torch.tensor([1 if _stop_signal["signum"] else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _refresh_data(self) -> None:
        """Re-read data.shards (a manifest that grows while the job runs): rank 0 resolves it, every rank adds
        the new shards to its loader, which keeps its place (pretrain/data/pipeline.py). A spec that cannot be
        read now, or that no longer lists a shard the run reads, keeps the current shards, with a warning."""
        answer: list = [None]
        if self.rank == 0:
            try:
                answer = [load_shards(self.cfg.data.shards)]
                dropped = first_missing(self.shards, answer[0])
                if dropped is not None:
                    raise ValueError(f"it no longer lists {dropped}; data may only grow")
            except (OSError, ValueError) as e:
                answer = [None]
                print(f"warning: step {self.step}: data.shards could not be re-read ({e}); keeping "
                      f"{len(self.shards)} shards", flush=True)
        dist.broadcast_object_list(answer, src=0)
        if answer[0] is None or len(answer[0]) == len(self.shards):
            return
        epoch = torch.tensor([self.loader.epoch], dtype=torch.int64, device=self.device)  # ranks agree when it joins
        dist.all_reduce(epoch, op=dist.ReduceOp.MAX, group=self.dp_group)
        self.loader.add_shards(answer[0], epoch=int(epoch.item()))
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
        client = self.client_state()
        return ckpt.save(self.engine, self.out / "checkpoints", self.step, client, self.uc_info,
                         self.tokenizer.model_path, keep_last=self.cfg.train.keep_last)

    def client_state(self) -> dict:
        """Our part of a checkpoint at this step (collective): architecture, step, every data-parallel rank's data
        position, tokenizer, full EMA, layout, growth history. The metrics of every step so far are written first."""
        self._flush()
        states = [None] * dist.get_world_size()
        dist.all_gather_object(states, (self.reads_data, self.dp_rank, self.loader.state_dict()))
        # one position per data-parallel rank, from the ranks that read data
        data = [s for _, s in sorted({dp: s for reads, dp, s in states if reads}.items())]
        ema = self._ema_state()
        client = {"architecture": self.arch.to_dict(), "step": self.step, "data": data,
                  "tokenizer_sha256": self.tokenizer.sha256, "tokenizer_kind": self.tokenizer.kind, "ema": ema,
                  "layout": {"tp": self.layout.tp, "pp": self.layout.pp, "dp": self.layout.dp},
                  "growth_history": self.growth_history, "run_config": self.cfg.to_dict(),
                  "samples": self.samples_seen, "data_samples": self.data_samples,
                  "data_samples_first": self.data_samples_first}
        return client
