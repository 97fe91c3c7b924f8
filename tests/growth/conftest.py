"""Session fixtures for the checkpoint-level growth tests: one source run trained at (tp, pp, dp) = (1, 1, 2),
and its growth by the CLI, shared by every test that needs a real checkpoint."""
import hashlib
from pathlib import Path

import pytest

from growth.grow import main as grow_main
from tests.conftest import launch

SOURCE_STEPS = 3
MOVE = "vision.layers+=2,text.width*=2"


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under a folder, to prove it was not touched."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def source_run(tiny_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("growth_source") / "run"
    launch(run, tiny_data, f"train.steps={SOURCE_STEPS}")
    return run


@pytest.fixture(scope="session")
def grown(source_run, tmp_path_factory) -> Path:
    """The CLI's growth of the source run (a DeepSpeed checkpoint, so it converts first), with PIM m = 0.9 from
    the EMA; returns the output folder. The CLI runs in-process (`python -m growth.grow` calls the same main)."""
    out = tmp_path_factory.mktemp("growth_out") / "grown"
    before = tree_digest(source_run)
    rc = grow_main(["--from", str(source_run), "--move", MOVE, "--tp", "1", "--pp", "1", "--out", str(out),
                    "--pim-m", "0.9", "--pim-source", "ema"])
    assert rc == 0, "growth failed; its error is in the captured stderr"
    assert tree_digest(source_run) == before, "growth modified its source"
    return out
