"""The user-input fuzzer (tests/fuzz, docs/reliability.md "Fuzzing user input"): a fixed-seed subset of its cases,
and one regression case for each fix it led to. Its fixtures (3 small shards, a 512-id tokenizer, one real 2-rank
DeepSpeed checkpoint) are made once per session; about 60 s in all on 2 CPU cores."""
import json
import random
import shutil
from pathlib import Path

import pytest

from tests.fuzz import fixtures
from tests.fuzz.__main__ import run
from tests.fuzz.checkpoints import EVAL_ENV, TAG, _eval, _eval_main, retrieval_jsonl
from tests.fuzz.configs import _argv, _main, _write, base_config
from tests.fuzz.harness import Case, Cli, Loader, run_case
from tests.fuzz.kinds import KINDS

SUBSET = 120  # cases of seed 0: 20 per kind


@pytest.fixture(scope="session")
def fuzz_work(tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz")
    fx = fixtures.tiny_data(work)
    fx["run"] = str(fixtures.checkpoint(work))
    return work, fx


@pytest.mark.slow
def test_fixed_seed_subset_finds_nothing(fuzz_work):
    work, _ = fuzz_work
    records = run(list(range(SUBSET)), list(KINDS), 0, work, timeout=30)
    findings = [r for r in records if r["verdict"] != "ok"]
    assert not findings, json.dumps(findings, indent=1)
    assert {r["kind"] for r in records} == set(KINDS)


def _case(fx, root: Path, kind: str, run, expect="error", names=()):
    case = Case(kind, "regression", run, expect, list(names))
    case.watch = [Path(fx["shards"]).parent.parent, Path(fx["run"]).parent]
    return run_case(case, root, timeout=30)


def _train(fx, root: Path, cfg=None, ds=None, overrides=(), extra=()):
    cfg = cfg or base_config(fx, root)
    return Cli(_main(), _argv(root, _write(root, cfg), ds, list(overrides), list(extra)))


@pytest.fixture
def root(tmp_path):
    (tmp_path / "case").mkdir()
    return tmp_path / "case"


# Each: what the user gave -> the key or file the one error line must name. Before the fixes each was a
# traceback (or, marked "accepted", went on into training).
CONFIG = [
    (["train.steps={"], "override 'train.steps={'"),                   # YAML error in an override value
    (["train..steps=1"], "empty key"),
    (["model.embed_dim=null"], "embed_dim"),                            # a TypeError not naming the key
    (["model.vision.layers=0.5"], "vision.layers"),                     # accepted
    (["train.lr=.nan"], "train.lr"),                                    # accepted
    (["growth.data_ratio=.nan"], "growth.data_ratio"),                  # accepted
    (["train=true"], "section 'train'"),
]


@pytest.mark.parametrize("overrides, named", CONFIG, ids=[c[1] for c in CONFIG])
def test_config_regressions(fuzz_work, root, overrides, named):
    _, fx = fuzz_work
    result = _case(fx, root, "config", _train(fx, root, overrides=overrides), names=[named])
    assert result.verdict == "ok" and result.outcome == "error", result


def test_out_dir_with_a_nul_character(fuzz_work, root):
    _, fx = fuzz_work
    cfg = base_config(fx, root)
    cfg["train"]["out_dir"] = str(root / "a\x00b")
    result = _case(fx, root, "config", _train(fx, root, cfg), names=["train.out_dir"])
    assert result.verdict == "ok" and result.outcome == "error", result


DS = [
    ("[1, 2]", [], "a JSON object"), ("{\"gradient_clipping\": NaN}", [], "gradient_clipping"),
    ("{}", ["ds.zero_optimization=3"], "zero_optimization"), ("{}", ["ds.zero_optimization.stage=7"], "stage"),
    ("{}", ["ds.gradient_clipping=-1"], "gradient_clipping"), ("{}", ["ds.x"], "ds.x"),
    ("{}", ["ds.fp16.enabled=true", "ds.bf16.enabled=true"], "bfloat16 and fp16"),
]


@pytest.mark.parametrize("text, overrides, named", DS, ids=[d[2] for d in DS])
def test_deepspeed_json_regressions(fuzz_work, root, text, overrides, named):
    _, fx = fuzz_work
    ds = root / "ds.json"
    ds.write_text(text)
    result = _case(fx, root, "ds", _train(fx, root, ds=str(ds), overrides=overrides), names=[named])
    assert result.verdict == "ok" and result.outcome == "error", result


MANIFESTS = [
    (lambda m: m["shards"][0].update(samples=-5), "shards[0].samples"),  # accepted
    (lambda m: m["shards"][0].update(samples=None), "shards[0].samples"),
    (lambda m: m.pop("shards"), "\"shards\" list"),
    (lambda m: m["shards"].append({"path": "manifest.json"}), "manifest cycle"),
    (lambda m: m["shards"].__setitem__(0, 3), "shards[0]"),
]


@pytest.mark.parametrize("edit, named", MANIFESTS, ids=[m[1] for m in MANIFESTS])
def test_manifest_regressions(fuzz_work, root, edit, named):
    _, fx = fuzz_work
    data = root / "data"
    shutil.copytree(fx["shards"], data)
    manifest = json.loads((data / "manifest.json").read_text())
    edit(manifest)
    (data / "manifest.json").write_text(json.dumps(manifest))
    cfg = base_config(fx, root)
    cfg["data"]["shards"] = str(data)
    result = _case(fx, root, "manifest", _train(fx, root, cfg), names=[named])
    assert result.verdict == "ok" and "data.shards" in result.detail, result


def test_data_with_no_usable_sample_is_one_error(fuzz_work, root):
    _, fx = fuzz_work
    tars = []
    for i in range(2):
        tars.append(root / f"{i}.tar")
        tars[-1].write_bytes(bytes(range(256)) * 8)
    result = _case(fx, root, "shard", Loader([str(t) for t in tars], fx["tokenizer"]))
    assert result.verdict == "ok" and result.outcome == "error" and "NoUsableData" in result.detail, result


def _mutated_run(fx, root: Path) -> Path:
    run = root / "run"
    shutil.copytree(fx["run"], run)
    return run


def test_checkpoint_regressions(fuzz_work, root):
    import torch
    _, fx = fuzz_work
    tasks = f"retrieval:{retrieval_jsonl(root, random.Random(0))}"
    run = _mutated_run(fx, root)
    latest = run / "checkpoints" / "latest"
    for value in ("/etc", "x" * 300, ".."):  # a path or a name too long: an OSError, or another folder read
        latest.write_text(value)
        result = _case(fx, root, "checkpoint", Cli(_eval_main(), _eval(str(run), tasks, root), EVAL_ENV),
                       names=[str(latest)])
        assert result.verdict == "ok" and result.outcome == "error", (value, result)
    latest.write_text(TAG)
    states = run / "checkpoints" / TAG / "mp_rank_00_model_states.pt"
    sd = torch.load(states, weights_only=False)
    del sd["growclip"]["step"]  # eval: KeyError; {} as the step: exit 0
    torch.save(sd, states)
    result = _case(fx, root, "checkpoint", Cli(_eval_main(), _eval(str(run), tasks, root), EVAL_ENV),
                   names=["'step'"])
    assert result.verdict == "ok" and result.outcome == "error", result
    shutil.rmtree(run)
    run = _mutated_run(fx, root)
    (run / "checkpoints" / TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()  # zero_to_fp32's ValueError
    result = _case(fx, root, "checkpoint", Cli(_eval_main(), _eval(str(run), tasks, root), EVAL_ENV),
                   names=["zero_to_fp32"])
    assert result.verdict == "ok" and result.outcome == "error", result


EVAL = [
    ("templates", "a {c} and {x}", "templates.txt"), ("templates", "a {c} {", "templates.txt"),
    ("templates", "a {{c}}", "templates.txt"), ("classnames", b"\xff\xfe", "names.txt"),
    ("jsonl", b"\xff\xfe{}", "labels.jsonl"), ("jsonl", json.dumps({"image": 5, "label": 0}), "labels.jsonl"),
]


@pytest.mark.parametrize("which, body, named", EVAL, ids=[f"{e[0]}-{i}" for i, e in enumerate(EVAL)])
def test_eval_task_file_regressions(fuzz_work, root, which, body, named):
    _, fx = fuzz_work
    files = {"templates": root / "templates.txt", "classnames": root / "names.txt", "jsonl": root / "labels.jsonl"}
    files["templates"].write_text("a photo of a {c}.\n")
    files["classnames"].write_text("shirt\nbag\n")
    files["jsonl"].write_text(json.dumps({"image": "x.png", "label": 0}) + "\n")
    (root / "x.png").write_bytes(b"")
    target = files[which]
    target.write_bytes(body if isinstance(body, bytes) else body.encode())
    argv = _eval(fx["run"], f"classification:{files['jsonl']}", root, "--classnames", str(files["classnames"]),
                 "--templates", str(files["templates"]))
    result = _case(fx, root, "eval_task", Cli(_eval_main(), argv, EVAL_ENV), names=[named])
    assert result.verdict == "ok" and result.outcome == "error", result


def test_an_empty_task_path_is_refused(fuzz_work, root):
    """`classification:` used to read the current folder (the repository) as a class folder."""
    _, fx = fuzz_work
    result = _case(fx, root, "eval_task", Cli(_eval_main(), _eval(fx["run"], "classification:", root), EVAL_ENV),
                   names=["classification:"])
    assert result.verdict == "ok" and result.outcome == "error", result
