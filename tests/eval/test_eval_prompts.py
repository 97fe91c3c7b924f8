"""Prompts of the in-domain sets: MNIST is prompted with its own training captions' templates (imported from
pretrain/data/sources/mnist.py, not copied) and CLIP_benchmark's prompt is scored beside it as `transfer_*`;
Fashion-MNIST's prompts are training caption templates. Both prompt sets match CLIP_benchmark's functions
exactly; the keys reach the CLI line, the in-training eval (whose `/acc1` the growth search averages) and the
experiment report, which labels the in-domain and transfer columns. Fast: an untrained stand-in model and a
small MNIST pickle written here."""
import gzip
import json
import pickle

import numpy as np
import pytest
import torch
from clip_benchmark.metrics import zeroshot_classification
from PIL import Image

from eval import builtin, intrain, zeroshot
from eval.data import Classification
from eval.harness import Options, run_task, summary
from eval.tasks import parse
from pretrain.data.sources import fashion_mnist as fmnist
from pretrain.data.sources import mnist as mnist_source

# CLIP_benchmark's accuracy() converts a 1-element array to float: deprecated, an error from numpy 2.4 (our pin)
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")
CB_MNIST = ['a photo of the number: "{c}".']
N = 60


@pytest.fixture
def mnist_dir(tmp_path):
    """DATA with raw/mnist/mnist.pkl.gz in the classic layout (train, valid, test; floats in [0, 1])."""
    rng = np.random.default_rng(0)

    def split(n):
        return rng.random((n, 784), dtype=np.float32), np.arange(n) % 10

    path = tmp_path / "raw" / "mnist" / "mnist.pkl.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wb") as f:
        pickle.dump((split(20), split(20), split(N)), f)
    return tmp_path


def test_mnist_prompts_are_its_training_caption_templates_and_the_transfer_set_clip_benchmarks(mnist_dir):
    data = builtin.mnist(mnist_dir)
    assert data.templates == builtin.MNIST_TEMPLATES == [t.replace("{}", "{c}") for t in mnist_source.TEMPLATES]
    assert data.prompt_sets == {"transfer": CB_MNIST}
    assert data.prompt_sets["transfer"] == builtin.clip_benchmark_json(
        "en_zeroshot_classification_templates.json")["mnist"]
    assert data.classnames == builtin.clip_benchmark_json("en_classnames.json")["mnist"]
    for digit, name in enumerate(data.classnames):  # each prompt is a caption the model trained on
        assert name in mnist_source.SYNONYMS[digit]
        assert [t.format(c=name) for t in data.templates] == [t.format(name) for t in mnist_source.TEMPLATES]
    assert not any(t.startswith("a photo of the number") for t in data.templates)
    assert "training captions" in data.info["prompts"] and "CLIP_benchmark" in data.info["transfer_prompts"]


def test_fashion_prompts_are_training_caption_templates():
    assert set(builtin.FASHION_TEMPLATES) <= set(builtin.caption_prompts(fmnist.TEMPLATES))
    # CLIP_benchmark has no Fashion-MNIST prompt, so there is no transfer set to score beside it
    assert "fashion_mnist" not in builtin.clip_benchmark_json("en_zeroshot_classification_templates.json")


class Labelled(torch.utils.data.Dataset):
    def __init__(self, data, transform):
        self.data, self.transform, self.classes = data, transform, data.classnames

    def __len__(self):
        return len(self.data.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.data.images[i])), self.data.labels[i]


def test_each_prompt_set_matches_clip_benchmark_on_the_same_images(fake):
    model, tokenizer, transform = fake
    classnames = [str(d) for d in range(10)]
    images = list(np.random.default_rng(1).integers(0, 256, (N, 28, 28), dtype=np.uint8))
    data = Classification("t", images, [i % 10 for i in range(N)], classnames, builtin.MNIST_TEMPLATES,
                          prompt_sets={"transfer": CB_MNIST})
    mine, samples, _ = zeroshot.evaluate(model, tokenizer, transform, data, batch_size=16, progress=False)
    loader = torch.utils.data.DataLoader(Labelled(data, transform), batch_size=16)
    own = zeroshot_classification.evaluate(model, loader, tokenizer, classnames, builtin.MNIST_TEMPLATES, "cpu",
                                           amp=False)
    cb = zeroshot_classification.evaluate(model, loader, tokenizer, classnames, CB_MNIST, "cpu", amp=False)
    assert samples == N and list(mine) == [*own, *(f"transfer_{k}" for k in cb)]
    np.testing.assert_equal({k: mine[k] for k in own}, own)
    np.testing.assert_equal({k: mine[f"transfer_{k}"] for k in cb}, cb)
    assert mine["acc1"] != mine["transfer_acc1"] or mine["acc5"] != mine["transfer_acc5"]  # really two sets


def test_the_mnist_task_reports_both_everywhere(fake, mnist_dir):
    model, tokenizer, transform = fake
    record = run_task(model, tokenizer, transform, parse("mnist")[0],
                      Options(progress=False, data_dir=mnist_dir))
    m = record["metrics"]
    assert record["dataset"] == "mnist" and record["task"] == "zeroshot_classification" and record["samples"] == N
    assert list(m) == ["acc1", "acc5", "mean_per_class_recall", "transfer_acc1", "transfer_acc5",
                       "transfer_mean_per_class_recall"]
    assert f"CLIP_benchmark prompts (transfer): top-1 {100 * m['transfer_acc1']:.2f}%" in summary(record)
    found = intrain.run(model, tokenizer, transform, "mnist", limit=0, data_dir=mnist_dir)
    assert found == {f"mnist/{k}": v for k, v in m.items()}
    # the growth search averages the keys ending in /acc1 (growth/search.py): the in-domain score only
    assert [k for k in found if k.endswith("/acc1")] == ["mnist/acc1"]


def test_the_experiment_report_labels_in_domain_and_transfer_columns(tmp_path):
    from growth.experiment import report
    new, old = tmp_path / "new", tmp_path / "old"
    for run, rec in ((new, {"dataset": "mnist", "task": "zeroshot_classification", "prompts": "training captions",
                            "metrics": {"acc1": 0.9, "transfer_acc1": 0.15}}),
                     (old, {"dataset": "mnist", "task": "zeroshot_classification", "metrics": {"acc1": 0.13}})):
        run.mkdir()
        fashion = {"dataset": "fashion_mnist", "task": "zeroshot_classification", "metrics": {"acc1": 0.7}}
        (run / "eval.json").write_text(json.dumps([fashion, rec]))
    scores = report.read_arm(new)["scores"]
    assert (scores["mnist"], scores["mnist:transfer"], scores["zs_avg"]) == (0.9, 0.15, pytest.approx(0.8))
    scores = report.read_arm(old)["scores"]  # before in-domain prompts: its MNIST score is the transfer one
    assert (scores.get("mnist"), scores["mnist:transfer"], scores["zs_tasks"]) == (None, 0.13, ["fashion_mnist"])
    columns = report.per_task_columns()
    assert columns[1:3] == [("mnist", "MNIST"), ("mnist:transfer", "MNIST, CB prompt†")]
