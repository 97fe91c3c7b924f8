"""Bad requests stop with one clear line (exit status 2) before anything is written: the source and any
existing output are untouched, and no temporary folder is left behind."""
import shutil

import pytest

from growth.grow import main
from pretrain import checkpoint as ckpt
from tests.growth.conftest import SOURCE_STEPS, tree_digest

pytestmark = pytest.mark.slow
TAG = f"step{SOURCE_STEPS:08d}"


def refused(capsys, source, out, *args) -> str:
    before = tree_digest(source) if source.exists() else {}
    rc = main(["--from", str(source), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert (tree_digest(source) if source.exists() else {}) == before, "the source was modified"
    assert not list(out.parent.glob(f".{out.name}.tmp-*")), "a temporary folder was left behind"
    return err


def test_missing_checkpoint(capsys, tmp_path):
    err = refused(capsys, tmp_path / "nope", tmp_path / "out", "--move", "vision.layers+=1")
    assert "nope: no such checkpoint" in err and not (tmp_path / "out").exists()


def test_corrupt_model_states(capsys, source_run, tmp_path):
    tag_dir = shutil.copytree(ckpt.resolve(source_run)[0] / TAG, tmp_path / "bad" / TAG)
    data = (tag_dir / ckpt.MODEL_STATES).read_bytes()
    (tag_dir / ckpt.MODEL_STATES).write_bytes(data[: len(data) // 2])
    err = refused(capsys, tag_dir, tmp_path / "out", "--move", "vision.layers+=1")
    assert f"{ckpt.MODEL_STATES}: cannot be read" in err and not (tmp_path / "out").exists()


def test_corrupt_parameter_file_found_mid_growth(capsys, grown, tmp_path):
    source = shutil.copytree(grown, tmp_path / "bad")
    broken = source / TAG / "zero" / "visual.proj" / "exp_avg.pt"
    broken.write_bytes(broken.read_bytes()[:100])
    err = refused(capsys, source, tmp_path / "out", "--move", "vision.layers+=1", "--pim-source", "last")
    assert "visual.proj/exp_avg.pt: cannot be read" in err and not (tmp_path / "out").exists()


def test_shrinking_move(capsys, grown, tmp_path):
    err = refused(capsys, grown, tmp_path / "out", "--move", "vision.layers=1")
    assert "vision.layers shrinks 4 -> 1" in err and not (tmp_path / "out").exists()


def test_target_invalid_for_the_layout(capsys, grown, tmp_path):
    err = refused(capsys, grown, tmp_path / "out", "--move", "vision.layers+=1", "--tp", "3")
    assert "vision.heads=2 is not divisible by tp=3" in err and not (tmp_path / "out").exists()


def test_output_folder_exists(capsys, grown, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = refused(capsys, grown, out, "--move", "vision.layers+=1")
    assert "already exists" in err and [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"


def test_wrong_tokenizer(capsys, grown, tmp_path):
    (tmp_path / "other.model").write_bytes(b"not the run's tokenizer")
    err = refused(capsys, grown, tmp_path / "out", "--move", "vision.layers+=1",
                  "--tokenizer", str(tmp_path / "other.model"))
    assert "differs from the checkpoint's tokenizer" in err and not (tmp_path / "out").exists()
