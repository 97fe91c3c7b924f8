"""The held-out contrastive loss of a run, checkpoint by checkpoint: the curve of loss against training FLOPs.

Decision: a post-hoc pass over the checkpoints an arm saves (`train.save_every = heldout.every`, plus the save
at every stage boundary and at the end), not `train.eval_every`: the trainer's in-run eval computes zero-shot and
retrieval metrics, not a loss, and pretrain/trainer.py is not ours to change. The pass costs one checkpoint read
and a few forward passes per point, after training, in the driver's process.

The held-out sets are disjoint from every training stage: Fashion-MNIST test and MNIST test (prepared here from
the raw data with the training captions' templates, `python -m pretrain.data.prepare SOURCE --split test
--limit N`) and the held-out OpenClipArt split (`data/shards/openclipart_heldout`, a fixed hash of each key). A
set is `heldout.batches` fixed batches of `heldout.batch` pairs (the contrastive loss depends on the batch size,
so it is the same for every arm and point), decoded once with the eval transform (no augmentation), first
caption of each image. The loss is the symmetric CLIP loss of pretrain/loss.py with the model's own logit scale,
on the live weights; a point's value is the mean over the sets (each set weighs the same), and each set's loss
is kept too. A set whose data is missing is left out, with the reason recorded in OUT/heldout/sets.json.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from .plan import Heldout

HELDOUT_JSONL = "heldout.jsonl"


def prepare(spec: Heldout, out: Path, echo=print) -> dict:
    """{name: shard spec} of the held-out sets (prepared once into OUT/heldout/NAME), and the left-out ones with
    their reasons, written to OUT/heldout/sets.json."""
    from pretrain.data.prepare import main as prepare_main
    record_path = out / "heldout" / "sets.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    need = spec.batch * spec.batches
    ready, missing = {}, {}
    for name, s in spec.sets.items():
        if "shards" in s:
            path = Path(s["shards"])
            if (path / "manifest.json").is_file() or path.is_file():
                ready[name] = str(path)
            else:
                missing[name] = f"{path}: not prepared (make data-stages)"
            continue
        folder = out / "heldout" / name
        if not (folder / "manifest.json").is_file():
            args = [s["source"], "--split", s.get("split", "test"), "--limit", str(need), "--out", str(folder)]
            if s.get("raw"):
                args += ["--raw", s["raw"]]
            why = "no manifest written"
            try:
                prepare_main(args)
            except (OSError, ValueError, SystemExit) as e:
                why = f"{e.__class__.__name__}: {e}"
            if not (folder / "manifest.json").is_file():
                missing[name] = f"python -m pretrain.data.prepare {' '.join(args)} failed ({why})"
                echo(f"[heldout] {name}: left out: {missing[name]}")
                continue
        ready[name] = str(folder)
    if not ready:
        raise FileNotFoundError(f"no held-out set could be prepared: {missing}")
    record = {"sets": ready, "missing": missing, "batch": spec.batch, "batches": spec.batches}
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=2))
    return record


class Batches:
    """The held-out batches of every set, decoded once per (tokenizer, image size, context)."""

    def __init__(self, sets: dict, batch: int, batches: int):
        self.sets, self.batch, self.batches = sets, batch, batches
        self._cache: dict = {}

    def get(self, tokenizer, image_size: int, context: int) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
        key = (tokenizer.sha256, image_size, context)
        if key not in self._cache:
            self._cache[key] = {name: self._load(spec, tokenizer, image_size) for name, spec in self.sets.items()}
        return self._cache[key]

    def _load(self, spec: str, tokenizer, image_size: int):
        from PIL import Image

        from eval.data import captioned_images
        from pretrain.data.transforms import eval_transform
        data = captioned_images(spec)
        n = min(len(data.images), self.batch * self.batches) // self.batch * self.batch
        if n == 0:
            raise ValueError(f"{spec}: fewer than {self.batch} pairs for one held-out batch")
        transform = eval_transform(image_size)
        images = torch.stack([transform(Image.open(io.BytesIO(b) if isinstance(b, bytes) else b).convert("RGB"))
                              for b in data.images[:n]])
        texts = tokenizer([caps[0] for caps in data.captions[:n]])
        return [(images[i:i + self.batch], texts[i:i + self.batch]) for i in range(0, n, self.batch)]


@torch.no_grad()
def losses(model, batches: dict, device: str = "cpu") -> dict[str, float]:
    from pretrain.loss import clip_loss_torch
    model.eval()
    out = {}
    for name, items in batches.items():
        values = []
        for images, texts in items:
            image, text, scale = model(images.to(device), texts.to(device))
            values.append(clip_loss_torch(image.float(), text.float(), image.float(), text.float(),
                                          scale.float()).item())
        out[name] = sum(values) / len(values)
    return out


def checkpoint_tags(run: Path) -> list[Path]:
    """The run's complete step tags (not `*.tmp`), by step."""
    folder = run / "checkpoints"
    tags = [p for p in folder.glob("step*") if p.is_dir() and p.name[4:].isdigit()] if folder.is_dir() else []
    return sorted(tags, key=lambda p: int(p.name[4:]))


def evaluate_run(run: Path, batches: Batches, curve: list, inherited: list[dict] = (), done: dict | None = None,
                 echo=print, device: str = "cpu") -> list[dict]:
    """One row per checkpoint of the run (and the inherited rows of a fork, before its own steps): step, samples,
    cumulative FLOPs, each set's loss and their mean. `done`: rows already computed, by step (reused)."""
    from eval.load import load_checkpoint

    from .arms import flops_at
    rows = {r["step"]: r for r in inherited}
    samples = {s: n for s, n, _ in curve}
    for tag in checkpoint_tags(run):
        step = int(tag.name[4:])
        if done and step in done:
            rows[step] = done[step]
            continue
        loaded = load_checkpoint(tag, "live", device)
        per_set = losses(loaded.model, batches.get(loaded.tokenizer, loaded.arch.vision.image_size,
                                                   loaded.arch.text.context), device)
        rows[step] = {"step": step, "samples": samples.get(step), "flops": flops_at(curve, step),
                      "loss": per_set, "mean": sum(per_set.values()) / len(per_set),
                      "params": sum(p.numel() for p in loaded.model.parameters())}
        del loaded
    return [rows[s] for s in sorted(rows)]


def read(run: Path) -> list[dict]:
    path = run / HELDOUT_JSONL
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def write(run: Path, rows: list[dict]) -> None:
    tmp = run / (HELDOUT_JSONL + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(run / HELDOUT_JSONL)
