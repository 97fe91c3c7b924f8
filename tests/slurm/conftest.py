"""A real single-node Slurm (scripts/slurm_local.sh) for the session: started once, stopped at the end."""
import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="session")
def slurm():
    """The state folder of a running local Slurm. Skips only when Slurm cannot be had here: not installed and not
    root (CI runs as root: `make test` installs the packages, and these tests run)."""
    script = ROOT / "scripts" / "slurm_local.sh"
    if os.geteuid() != 0:
        pytest.skip("the local Slurm needs root (scripts/slurm_local.sh start)" if shutil.which("sbatch") else
                    "Slurm is not installed and this is not root (bash scripts/slurm_local.sh install)")
    subprocess.run(["bash", str(script), "install"], check=True)
    start = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True)
    if start.returncode != 0:
        raise AssertionError(f"local Slurm did not start:\n{start.stdout}\n{start.stderr}")
    folder = start.stdout.strip().splitlines()[-1]
    yield folder
    subprocess.run(["bash", str(script), "stop", folder], check=False, timeout=60)
