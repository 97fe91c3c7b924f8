"""Shell entry points parse (tests/slurm run the sbatch scripts on a real local Slurm)."""
import subprocess
from pathlib import Path

import pytest

SCRIPTS = sorted(str(p) for p in Path("slurm").glob("*.sbatch")) + ["scripts/fetch_data.sh", "scripts/slurm_local.sh",
                                                                     ".ci/run"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses(script):
    subprocess.run(["bash", "-n", script], check=True)
