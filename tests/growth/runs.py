"""Reading a grown checkpoint and the batches a resumed run takes, for the tests that launch real runs."""
import json
from pathlib import Path

import torch

from growth.universal import load_parameter
from pretrain import checkpoint as ckpt
from pretrain.arch import Architecture
from pretrain.data.manifest import load_shards
from pretrain.data.pipeline import TrainLoader
from pretrain.data.tokenizer import load_tokenizer
from pretrain.loss import clip_loss_torch
from pretrain.model import CLIP


def grown_model(tag_dir: Path) -> CLIP:
    arch = Architecture.from_dict(ckpt.read_client_state(tag_dir)["architecture"])
    model = CLIP(arch)
    model.load_state_dict({n: load_parameter(tag_dir, n)["fp32"] for n, _ in model.named_parameters()})
    return model.eval()


def saved_model(tag_dir: Path) -> CLIP:
    """The model of a DeepSpeed checkpoint tag (the run's own save, not a universal grown one)."""
    model = CLIP(Architecture.from_dict(ckpt.read_client_state(tag_dir)["architecture"]))
    model.load_state_dict(ckpt.full_state_dict(tag_dir))
    return model.eval()


def first_batches(tag_dir: Path | None, run: Path, dp: int):
    """The batches the resumed run's ranks take first, built as the trainer builds them (pretrain/trainer.py):
    the saved data position, which the loader only honours at the dp it was saved with. tag_dir None: the
    batches of the run's first step."""
    cfg = json.loads((run / "run_config.json").read_text())
    client = ckpt.read_client_state(tag_dir) if tag_dir else {"architecture": cfg["model"]}
    data, train = cfg["data"], cfg["train"]
    arch = Architecture.from_dict(client["architecture"])
    options = {"order": data["order"]} if "order" in data else {}
    batches = []
    for rank in range(dp):
        shards = data["shards"] or data["stages"][0]  # with data.stages only the first step's batches are right
        loader = TrainLoader(load_shards(shards), load_tokenizer(data["tokenizer"], arch.text.context),
                             arch.vision.image_size, train["micro_batch"], dp_rank=rank, dp_world=dp,
                             workers=data["workers"], seed=train["seed"], shuffle_buffer=data["shuffle_buffer"],
                             max_pixels=data["max_pixels"], scale=(data["crop_scale_min"], 1.0), **options)
        if client.get("data"):  # the loader takes its rank's position, or restarts if the layout changed
            loader.load_state_dict(client["data"])
        batches.append(next(iter(loader)))
    return batches


@torch.no_grad()
def single_process_loss(model: CLIP, batches) -> float:
    image, text, scale = model(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    return clip_loss_torch(image, text, image, text, scale).item()
