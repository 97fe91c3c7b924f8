"""Shell entry points parse (Slurm itself is not available here)."""
import subprocess
from pathlib import Path

import pytest

SCRIPTS = sorted(str(p) for p in Path("slurm").glob("*.sbatch")) + ["scripts/fetch_data.sh", ".ci/run"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses(script):
    subprocess.run(["bash", "-n", script], check=True)
