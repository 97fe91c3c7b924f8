"""Metric semantics against CLIP_benchmark's own functions on an untrained stand-in model (fast): prompt
ensembles, top-k and mean per-class recall (also below five classes), retrieval with several captions per
image and exact ties between identical captions; the linear probe's sweep; the comparison table; built-in
tasks on fetched data."""
import json

import numpy as np
import pytest
import torch
from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval
from PIL import Image
from sklearn.datasets import load_digits

from eval import compare, linear_probe, retrieval, zeroshot
from eval.data import Classification, Retrieval, TaskUnavailable
from eval.harness import Options, run_task
from eval.tasks import parse

# CLIP_benchmark's accuracy() converts a 1-element array to float: deprecated, an error from numpy 2.4 (our pin)
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")
TEMPLATES = ["a photo of a {c}.", "a drawing of the {c}.", "{c}"]


def random_images(n, seed=0):
    return list(np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8))


class Pairs(torch.utils.data.Dataset):
    def __init__(self, data, transform, captions=None):
        self.data, self.transform, self.captions = data, transform, captions

    def __len__(self):
        return len(self.data.images)

    def __getitem__(self, i):
        image = self.transform(Image.fromarray(self.data.images[i]))
        return (image, self.data.captions[i]) if self.captions else (image, self.data.labels[i])


def collate_captions(batch):
    images, texts = zip(*batch)
    return torch.stack(images), texts


def test_zeroshot_matches_clip_benchmark(fake):
    model, tokenizer, transform = fake
    for classnames in (["cat", "dog", "ship", "truck", "bird", "frog", "horse"], ["cat", "dog", "ship"]):
        data = Classification("t", random_images(70), [i % len(classnames) for i in range(70)], classnames, TEMPLATES)
        Pairs.classes = classnames
        loader = torch.utils.data.DataLoader(Pairs(data, transform), batch_size=16)
        theirs = zeroshot_classification.evaluate(model, loader, tokenizer, classnames, TEMPLATES, "cpu", amp=False)
        rng = torch.get_rng_state()
        mine, samples, skipped = zeroshot.evaluate(model, tokenizer, transform, data, batch_size=16, progress=False)
        assert torch.equal(torch.get_rng_state(), rng)  # in-training eval leaves training's random numbers alone
        assert samples == 70 and not skipped
        np.testing.assert_equal(mine, theirs)  # NaN top-5 below five classes, as CLIP_benchmark


def test_retrieval_matches_clip_benchmark_with_several_captions_and_ties(fake):
    model, tokenizer, transform = fake
    words = ["red coat", "blue bag", "a dress", "a dress", "old boot", "new shirt", "a red bag"]
    captions = [[words[(3 * i + j) % len(words)] for j in range(1 + i % 3)] for i in range(41)]  # 1-3 each
    data = Retrieval("t", random_images(41), captions)
    loader = torch.utils.data.DataLoader(Pairs(data, transform, captions=True), batch_size=8,
                                         collate_fn=collate_captions)
    theirs = zeroshot_retrieval.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    mine, samples, _ = retrieval.evaluate(model, tokenizer, transform, data, batch_size=8, progress=False)
    assert samples == 41 and mine == theirs


def test_recall_caps_k_at_the_number_of_candidates():
    images, texts = torch.eye(3), torch.eye(3)[[0, 0, 1, 2]]
    out = retrieval.metrics(images, texts, torch.tensor([0, 0, 1, 2]), batch_size=2, recall_at=(1, 10))
    assert out == {"image_retrieval_recall@1": 1.0, "text_retrieval_recall@1": 1.0,
                   "image_retrieval_recall@10": 1.0, "text_retrieval_recall@10": 1.0}


def test_linear_probe_sweeps_c_on_a_validation_split():
    x, y = load_digits(return_X_y=True)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = linear_probe.fit_and_score(x[:1200], y[:1200], x[1200:], y[1200:], n_classes=10)
    assert out["lp_acc1"] > 0.9 and out["val_acc1"] > 0.9 and out["lp_acc5"] >= out["lp_acc1"]
    assert out["C"] in linear_probe.C_GRID and out["C"] > 1e-3  # heavy regularisation would predict one class


def test_compare_prints_files_side_by_side(tmp_path, capsys):
    a = [{"dataset": "fashion_mnist", "task": "zeroshot_classification", "metrics": {"acc1": 0.5, "acc5": 0.9}}]
    b = {"dataset": "fashion_mnist", "task": "zeroshot_classification", "metrics": {"acc1": 0.25}}  # CLIP_benchmark
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["fashion_mnist", "acc1", "50.00", "25.00"]
    assert lines[2].split() == ["fashion_mnist", "acc5", "90.00", "-"]


def test_linear_probe_task_end_to_end(fake):
    model, tokenizer, transform = fake
    record = run_task(model, tokenizer, transform, parse("fashion_mnist_linear_probe")[0],
                      Options(limit=300, progress=False, workers=1))
    assert record["task"] == "linear_probe" and record["samples"] == 300 and record["split"] == "test"
    assert 0.5 < record["metrics"]["lp_acc1"] <= 1  # pixels through a random linear map still separate classes


@pytest.mark.parametrize("task", ["mnist", "openclipart_retrieval"])
def test_builtin_task_on_fetched_data(fake, task):
    """Runs where scripts/fetch_data.sh has fetched the data into ./data (the CLI's default)."""
    model, tokenizer, transform = fake
    try:
        record = run_task(model, tokenizer, transform, parse(task)[0], Options(limit=100, progress=False))
    except TaskUnavailable as e:
        pytest.skip(str(e))
    assert record["samples"] == 100 and record["split"] in ("test", "heldout")
    assert all(0 <= v <= 1 for v in record["metrics"].values())
