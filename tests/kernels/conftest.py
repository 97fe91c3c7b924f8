"""Kernel tests run the Triton interpreter on CPU: set it (and NaN-poisoned output buffers)
before anything imports triton or kernels (tests/conftest.py sets both first for the whole session)."""
import os
import sys
import zlib
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"
os.environ["GROWCLIP_KERNELS_POISON"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytest  # noqa: E402
import torch  # noqa: E402

from kernels import _common  # noqa: E402

if not _common.use_triton(torch.empty(0)):
    # Otherwise every kernel test would silently compare the torch fallback with itself.
    raise RuntimeError("tests/kernels need triton and TRITON_INTERPRET=1 set before the first "
                       "import of kernels (something imported it earlier in this session)")


@pytest.fixture(autouse=True)
def _seed(request):
    """Fresh random inputs per test, reproducible from the test id."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
