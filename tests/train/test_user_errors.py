"""Errors a user can act on (issue 13, Build 7), and train.keep_last.

- A bad train.out_dir (a file, a path inside a file, a read-only filesystem, no permission) stops
  `pretrain/main.py` with one line before any work (DeepSpeed is never started).
- A full disk during a save says "no space left", names the folder, and `latest` keeps naming the last complete
  checkpoint; `--resume latest` then goes on.
- A run resumed from an earlier step than its metrics.jsonl reaches drops the records past it: each step once.
- train.keep_last N deletes the older tags beyond the N newest, only after the new one is complete.
(A truncated optimizer shard on --resume or in eval: tests/train/test_untrusted_files.py.)

The full disk is a tmpfs mounted over OUT/checkpoints in a mount namespace of the worker's own (`unshare -m`,
root); where that is not allowed, the full-disk test is skipped and the others run without it. The read-only
filesystem is a read-only tmpfs the same way; permission denied runs the check as `nobody` (setpriv).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain import checkpoint as ckpt
from pretrain.config import ConfigError, load_run_config
from pretrain.main import main
from tests.conftest import ROOT, SMALL_MODEL, rank_env


def can_mount(tmp_path: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    (tmp_path / "mnt").mkdir(exist_ok=True)
    return subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {tmp_path / 'mnt'}"],
                          capture_output=True).returncode == 0


def run_args(tiny_data, out) -> list[str]:
    return ["--config", str(ROOT / "configs/demo.yaml"), "--deepspeed_config", str(ROOT / "ds_configs/zero2.json"),
            f"data.shards={tiny_data['shards']}", f"data.tokenizer={tiny_data['tokenizer']}",
            f"train.out_dir={out}", "train.steps=2", *SMALL_MODEL]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


# ---- train.out_dir ------------------------------------------------------------------------------------------------
def test_out_dir_that_is_a_file_stops_before_any_work(tiny_data, tmp_path, capsys, monkeypatch):
    import pretrain.growth_loop

    def no_run(*a, **k):
        raise AssertionError("the run started")
    monkeypatch.setattr(pretrain.growth_loop, "GrowingRun", no_run)
    file = tmp_path / "file"
    file.write_text("not a folder")
    for out, said in ((file, f"train.out_dir={file} is a file"), (file / "run", f"is inside a file ({file})")):
        assert main(run_args(tiny_data, out)) == 2
        errors = error_lines(capsys.readouterr().err)
        assert len(errors) == 1 and said in errors[0], errors
    assert file.read_text() == "not a folder"


def test_out_dir_on_a_read_only_filesystem(tiny_data, tmp_path):
    if not can_mount(tmp_path):
        pytest.skip("needs root and `unshare -m` (a read-only tmpfs in a private mount namespace)")
    ro = tmp_path / "ro"
    ro.mkdir()
    code = "import sys; from pretrain.main import main; sys.exit(main(sys.argv[1:]))"
    cmd = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o ro tmpfs {ro} && exec "$0" "$@"', sys.executable, "-c",
           code, *run_args(tiny_data, ro / "run")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(errors) == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"train.out_dir={ro / 'run'} is on a read-only filesystem" in errors[0]
    assert "trainer:" not in proc.stdout  # stopped before the trainer (and DeepSpeed) started


def test_out_dir_without_permission(tmp_path):
    """Root writes anywhere; `nobody` may not even enter pytest's temporary folders (mode 0700)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the check as another user")
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from pretrain.checkpoint import check_out_dir; "
            f"check_out_dir({str(tmp_path / 'run')!r})")
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                          cwd="/", capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "ConfigError" in proc.stderr, proc.stderr[-2000:]
    assert f"train.out_dir={tmp_path / 'run'} is not writable (permission denied)" in proc.stderr


def test_out_dir_that_does_not_exist_yet_passes_and_is_not_created(tmp_path):
    ckpt.check_out_dir(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists() and not list(tmp_path.iterdir())


# ---- a full disk, a resume, keep_last: one worker process, three runs into one out_dir -----------------------------
@pytest.fixture(scope="module")
def saves(tiny_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("saves")
    mounted = can_mount(base)
    out, result = base / "run", base / "result.json"
    cmd = [sys.executable, "tests/train/save_worker.py", str(result), tiny_data["shards"], tiny_data["tokenizer"],
           str(out)]
    if mounted:
        cmd = ["unshare", "-m", *cmd, "--mount"]
    env = rank_env()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {**json.loads(result.read_text()), "mounted": mounted, "out": out}


def test_full_disk_during_a_save_says_so_and_latest_stays(saves):
    if not saves["mounted"]:
        pytest.skip("needs root and `unshare -m` (a small tmpfs over the checkpoints folder)")
    b = saves["B"]
    errors = error_lines(b["stderr"])
    assert b["rc"] == 2 and len(errors) == 1, b["stderr"][-3000:]
    folder = saves["out"] / "checkpoints" / "step00000003.tmp"
    assert errors[0].startswith(f"error: no space left on device while saving the checkpoint {folder} "), errors
    assert "latest still names step00000002" in errors[0]
    assert b["latest"] == "step00000002" and "step00000003" not in b["tags"]
    c = saves["C"]  # space freed: --resume latest goes on from step 2, and its save removes the partial folder
    assert c["rc"] == 0 and c["latest"] == "step00000003" and "step00000003.tmp" not in c["tags"]


def test_resume_drops_the_metrics_records_past_the_resume_point(saves):
    """B wrote step 3's record and then stopped without a checkpoint of step 3 (its save failed; without the
    tmpfs, C resumes from step 2 explicitly): C starts at step 2, drops that record and writes step 3 again."""
    b, c = saves["B"], saves["C"]
    assert b["steps"] == [1, 2, 3]
    assert c["rc"] == 0 and c["steps"] == [1, 2, 3], c["steps"]
    assert "metrics.jsonl: dropped 1 records after step 2" in c["stdout"]
    assert c["loss"]["3"] == b["loss"]["3"]  # the same step, redone exactly
    assert c["loss"]["1"] == saves["A"]["loss"]["1"] and c["loss"]["2"] == saves["A"]["loss"]["2"]


def test_keep_last_deletes_old_tags_only_after_a_newer_one_is_complete(saves):
    steps = lambda p: [t for t in saves[p]["tags"] if t.startswith("step")]  # noqa: E731
    assert steps("A") == ["step00000001", "step00000002"]
    if saves["mounted"]:  # the failed step-3 save deleted nothing
        assert steps("B") == ["step00000001", "step00000002", "step00000003.tmp"]
    assert steps("C") == ["step00000002", "step00000003"]


# ---- units ---------------------------------------------------------------------------------------------------------
def test_prune_keeps_the_newest_the_latest_and_tags_past_the_save(tmp_path):
    for s in (1, 2, 3, 4, 5, 7):
        (tmp_path / f"step{s:08d}").mkdir()
    (tmp_path / "step00000006.tmp").mkdir()
    (tmp_path / "latest").write_text("step00000002")  # as if a user pointed it back
    assert ckpt.prune(tmp_path, 0, "step00000005") == []
    deleted = ckpt.prune(tmp_path, 2, "step00000005")
    assert sorted(p.name for p in deleted) == ["step00000001", "step00000003"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step00000002", "step00000004", "step00000005",
                                                          "step00000006.tmp", "step00000007"]


def test_trim_logs_is_atomic_and_drops_a_cut_line(tmp_path):
    rows = [json.dumps({"step": s, "loss": 1.0}) for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 6, "lo')  # a crash mid-line
    (tmp_path / "eval.jsonl").write_text(json.dumps({"step": 2}) + "\n" + json.dumps({"step": 4}) + "\n")
    assert ckpt.trim_logs(tmp_path, 3) == {"metrics.jsonl": 3, "eval.jsonl": 1}
    assert (tmp_path / "metrics.jsonl").read_text() == "\n".join(rows[:3]) + "\n"
    assert (tmp_path / "eval.jsonl").read_text() == json.dumps({"step": 2}) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.jsonl", "metrics.jsonl"]  # no temporary file left
    assert ckpt.trim_logs(tmp_path, 3) == {}


def test_keep_last_must_not_be_negative(tiny_data):
    with pytest.raises(ConfigError, match="train.keep_last must be >= 0"):
        load_run_config(str(ROOT / "configs/demo.yaml"), [f"data.shards={tiny_data['shards']}",
                                                          f"data.tokenizer={tiny_data['tokenizer']}",
                                                          "train.keep_last=-1"])


def test_a_loss_that_is_not_finite_stops_the_run_before_it_is_saved(tiny_data, tmp_path):
    """lr 1e30 puts the weights near 1e29 after one step, and the next forward overflows: the run stops at the
    logging step that sees it, with one line naming the first bad step, and saves nothing past it (bf16 runs no
    longer rely on DeepSpeed's per-step overflow check, pretrain/trainer.py prepare_ds_config)."""
    out = tmp_path / "run"
    argv = [sys.executable, "pretrain/main.py", *run_args(tiny_data, out), "train.steps=4", "train.log_every=2",
            "train.save_every=2", "train.warmup=1", "train.lr=1.0e+30"]
    env = rank_env()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "the loss is not finite from step 2 " in errors[0], proc.stderr[-3000:]
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").glob("step*"))
