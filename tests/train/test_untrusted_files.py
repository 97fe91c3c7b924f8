"""Untrusted checkpoint files (issue 13, Build 6 and the truncated shard of Build 7).

A checkpoint whose model-states file, or whose ZeRO optimizer shard, carries a malicious pickle (a `__reduce__`
that would create a marker file) is refused with one line naming the file by `--resume`, `python -m eval`,
`python -m growth.grow` and `python -m growth.search`, and the marker never appears. A truncated optimizer
shard is named too. The checks pass on real checkpoints: ZeRO 0-3 in bf16 and ZeRO-2 in fp32 here (fp32 ZeRO
1-3, tp/pp and universal checkpoints are checked by every resume, growth and full_state_dict of the other tests).

No launcher: one process saves every checkpoint used here (WORLD_SIZE=1), the --resume refusal runs two
`pretrain/main.py` processes as ranks 0 and 1 (what the launcher starts), the other paths run in-process.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval.__main__ import main as eval_main
from growth.grow import main as grow_main
from growth.search import main as search_main
from pretrain import checkpoint as ckpt
from pretrain.main import main as train_main
from tests.conftest import ROOT, SMALL_MODEL, free_port, rank_env

pytestmark = pytest.mark.slow
TAG = "step00000002"
OPTIM = "zero_pp_rank_0_mp_rank_00_optim_states.pt"  # the second file: rank 1's share of the check at 2 ranks


class Evil:
    """Unpickling this calls exec, which creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


SAVE = """
import json, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from pretrain.config import load_run_config
from pretrain.growth_loop import close
from pretrain.trainer import Trainer
for name, stage, bf16 in (("fp32-z2", 2, False), ("bf16-z0", 0, True), ("bf16-z1", 1, True), ("bf16-z2", 2, True),
                          ("bf16-z3", 3, True)):
    cfg = load_run_config("configs/demo.yaml", ["data.shards={shards}", "data.tokenizer={tokenizer}",
        "train.out_dir={out}/" + name, "train.micro_batch=8", "train.steps=2", "data.workers=0",
        "data.shuffle_buffer=50", *{model!r}])
    trainer = Trainer(cfg, {{"zero_optimization": {{"stage": stage}}, "bf16": {{"enabled": bf16}}}})
    off = [n for n, p in trainer.engine.module.named_parameters() if p.numel() % 8 == 0 and p.data_ptr() % 16]
    (Path("{out}") / (name + "-misaligned.json")).write_text(json.dumps(off))
    trainer.train()
    close(trainer)
"""


@pytest.fixture(scope="module")
def saved(tiny_data, tmp_path_factory) -> Path:
    """Run folders fp32-z2 (the source of the poisoned copies), bf16-z0 .. bf16-z3; 2 steps each, one process."""
    out = tmp_path_factory.mktemp("untrusted")
    code = SAVE.format(root=str(ROOT), shards=tiny_data["shards"], tokenizer=tiny_data["tokenizer"], out=out,
                       model=SMALL_MODEL)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=rank_env(0, 1, free_port()),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def source(saved) -> Path:
    return saved / "fp32-z2"


def copy_run(source: Path, dst: Path) -> Path:
    """A run folder holding a copy of the source's checkpoint (checkpoints/<tag> and latest)."""
    shutil.copytree(source / "checkpoints" / TAG, dst / "checkpoints" / TAG)
    (dst / "checkpoints" / "latest").write_text(TAG)
    return dst


def poisoned(source: Path, dst: Path, name: str) -> tuple[Path, Path]:
    """(run folder, marker path): a copy whose file `name` also holds an Evil object."""
    run = copy_run(source, dst)
    marker = dst / "MARKER"
    f = run / "checkpoints" / TAG / name
    state = ckpt.load_checked(f, mmap=False)
    state["extra"] = Evil(marker)
    torch.save(state, f)
    return run, marker


@pytest.fixture(params=[ckpt.MODEL_STATES, OPTIM], ids=["model_states", "optimizer_shard"])
def evil(request, source, tmp_path) -> dict:
    run, marker = poisoned(source, tmp_path / "evil", request.param)
    return {"run": run, "marker": marker, "file": run / "checkpoints" / TAG / request.param}


def one_error(text: str) -> str:
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, text[-3000:]
    return errors[0]


def assert_refused(err: str, file: Path) -> None:
    assert f"{file}: refused" in err and "(it names exec)" in err, err


def test_the_poison_would_run(evil):
    """The test's own premise: loading the file as DeepSpeed does (weights_only=False) creates the marker."""
    torch.load(evil["file"], weights_only=False)
    assert evil["marker"].exists()


def test_eval_refuses(evil, capsys):
    assert eval_main(["--checkpoint", str(evil["run"]), "--tasks", "fashion_mnist", "--limit", "10"]) == 2
    assert_refused(one_error(capsys.readouterr().err), evil["file"])
    assert not evil["marker"].exists()


def test_grow_refuses(evil, capsys, tmp_path):
    out = tmp_path / "grown"
    assert grow_main(["--from", str(evil["run"]), "--move", "vision.layers+=1", "--out", str(out)]) == 2
    assert_refused(one_error(capsys.readouterr().err), evil["file"])
    assert not evil["marker"].exists() and not out.exists()


def test_search_refuses(evil, capsys, tiny_data, tmp_path):
    rc = search_main(["--from", str(evil["run"]), "--data", tiny_data["shards"], "--out", str(tmp_path / "grown")])
    assert rc == 2
    assert_refused(one_error(capsys.readouterr().err), evil["file"])
    assert not evil["marker"].exists()


def test_resume_refuses_the_model_states_file_in_process(source, tiny_data, tmp_path, capsys):
    """The model-states file is read (for the client state) before the trainer starts: main stops there."""
    run, marker = poisoned(source, tmp_path / "evil", ckpt.MODEL_STATES)
    rc = train_main(["--config", str(ROOT / "configs/demo.yaml"), "--deepspeed_config",
                     str(ROOT / "ds_configs/zero2.json"), "--resume", str(run),
                     f"data.shards={tiny_data['shards']}", f"data.tokenizer={tiny_data['tokenizer']}",
                     f"train.out_dir={tmp_path / 'out'}", "train.steps=4", *SMALL_MODEL])
    assert rc == 2
    assert_refused(one_error(capsys.readouterr().err), run / "checkpoints" / TAG / ckpt.MODEL_STATES)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_resume_refuses_an_optimizer_shard_at_two_ranks(source, tiny_data, tmp_path):
    """Two ranks of `pretrain/main.py`: they split the check (rank 0 the model-states file, rank 1 the shard),
    rank 1 finds it, both stop with the same line before DeepSpeed's engine starts."""
    run, marker = poisoned(source, tmp_path / "evil", OPTIM)
    argv = [sys.executable, "pretrain/main.py", "--config", "configs/demo.yaml", "--resume", str(run),
            f"data.shards={tiny_data['shards']}", f"data.tokenizer={tiny_data['tokenizer']}",
            f"train.out_dir={tmp_path / 'out'}", "train.steps=4", *SMALL_MODEL]
    port = free_port()
    procs = [subprocess.Popen(argv, cwd=ROOT, env=rank_env(r, 2, port), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 2, stdout[-2000:] + stderr[-3000:]
        assert one_error(stderr).startswith(f"error: {run / 'checkpoints' / TAG / OPTIM}: refused"), stderr[-3000:]
        assert "Traceback" not in stderr and "trainer:" not in stdout, stderr[-3000:]
    assert not marker.exists() and not (tmp_path / "out" / "metrics.jsonl").exists()


def test_truncated_optimizer_shard_is_named(source, tmp_path, capsys):
    run = copy_run(source, tmp_path / "cut")
    f = run / "checkpoints" / TAG / OPTIM
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert eval_main(["--checkpoint", str(run), "--tasks", "fashion_mnist", "--limit", "10"]) == 2
    err = one_error(capsys.readouterr().err)
    assert f"{f}: cannot be read, truncated or corrupt?" in err and "PytorchStreamReader" in err, err
    assert grow_main(["--from", str(run), "--move", "vision.layers+=1", "--out", str(tmp_path / "g")]) == 2
    assert f"{f}: cannot be read" in one_error(capsys.readouterr().err)


def test_real_checkpoints_pass_and_each_rank_checks_its_share(saved):
    tag = saved / "fp32-z2" / "checkpoints" / TAG
    assert [f.name for f in ckpt.checkpoint_files(tag)] == [ckpt.MODEL_STATES, OPTIM]
    assert ckpt.check_files(tag, 0, 2) == 1 and ckpt.check_files(tag, 1, 2) == 1 and ckpt.check_files(tag) == 2
    for stage in (0, 1, 2, 3):
        tag = saved / f"bf16-z{stage}" / "checkpoints" / TAG
        names = [f.name for f in ckpt.checkpoint_files(tag)]
        assert ckpt.check_files(tag) == len(names) >= 1, (stage, names)
        assert any("optim_states" in n for n in names) == (stage > 0), (stage, names)


def test_zero_keeps_every_parameter_16_byte_aligned(saved):
    """ZeRO-1/2 make each module parameter a view into one flat buffer per optimizer group. A parameter whose size
    is a multiple of 8 must start on a 16-byte boundary (cuBLAS falls back to slow kernels otherwise: docs/perf.md);
    the 1-element logit_scale first in its group used to shift all 201 parameters after it by 2 bytes in bf16."""
    for name in ("fp32-z2", "bf16-z1", "bf16-z2"):
        assert json.loads((saved / f"{name}-misaligned.json").read_text()) == [], name


def test_resume_refuses_a_checkpoint_whose_groups_are_in_another_order(saved, tiny_data, tmp_path):
    """A checkpoint written before the groups were aligned lists logit_scale first in the no-decay group; its flat
    ZeRO state would load into the wrong parameters, so --resume stops with one line that says how to convert it."""
    run = copy_run(saved / "bf16-z2", tmp_path / "old")
    f = run / "checkpoints" / TAG / ckpt.MODEL_STATES
    states = ckpt.load_checked(f, mmap=False)
    group = states["param_shapes"][1]
    assert list(group)[-1] == "logit_scale", list(group)[-3:]
    states["param_shapes"][1] = type(group)([("logit_scale", group["logit_scale"])] +
                                            [(k, v) for k, v in group.items() if k != "logit_scale"])
    torch.save(states, f)
    argv = [sys.executable, "pretrain/main.py", "--config", "configs/demo.yaml", "--resume", str(run),
            "--deepspeed_config", "ds_configs/zero2-bf16.json", f"data.shards={tiny_data['shards']}",
            f"data.tokenizer={tiny_data['tokenizer']}", f"train.out_dir={tmp_path / 'out'}", "train.steps=4",
            "train.micro_batch=8", *SMALL_MODEL]
    proc = subprocess.run(argv, cwd=ROOT, env=rank_env(0, 1, free_port()), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    err = one_error(proc.stderr)
    assert err.startswith(f"error: {f}: optimizer group 1 holds the parameters in another order") and \
        "ds_to_universal" in err, err
    assert not (tmp_path / "out" / "metrics.jsonl").exists()
