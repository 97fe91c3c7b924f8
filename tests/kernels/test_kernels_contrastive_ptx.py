"""The loss kernels compiled for sm_90 (H100/H200) on this machine, no GPU needed: triton's own ptxas turns them
into PTX, where we check that 16-bit features run 16-bit tensor-core dots (wgmma) with fp32 accumulators, and fp32
features TF32 ones. A kernel that upcast its inputs before tl.dot, or accumulated in 16 bits, fails here.
The compile runs in a subprocess without the interpreter (this session's kernels are interpreter wrappers).
Skipped where triton has no CUDA backend."""
import json
import os
import subprocess
import sys

import pytest
import triton

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif("nvidia" not in triton.backends.backends, reason="triton has no CUDA backend")
WGMMA = {"bf16": "f32.bf16.bf16", "fp16": "f32.f16.f16", "fp32": "f32.tf32.tf32"}
COMPILE = """
import json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels import contrastive as c, triton_contrastive as k

common = {"SCALE": "*fp32", "R": "i32", "C": "i32", "off": "i32", "D": "constexpr", "BLOCK_M": "constexpr",
          "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "DOT_PRECISION": "constexpr"}

def wgmma(kernel, sig, consts, t):
    src = ASTSource(fn=kernel, signature={**sig, **common}, constexprs=dict(
        D=512, BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_K=64, DOT_PRECISION=c.DOT_PRECISION, **consts))
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                         options=dict(num_warps=t.num_warps, num_stages=t.num_stages)).asm["ptx"]
    return sorted({line.split("wgmma.mma_async.sync.aligned.")[1].split()[0].split(".", 1)[1]
                   for line in ptx.splitlines() if "wgmma.mma_async" in line})

out = {}
for dt in ("bf16", "fp16", "fp32"):
    out["fwd_" + dt] = wgmma(k.clip_lse_fwd, {"X": "*" + dt, "Y": "*" + dt, "LSE": "*fp32", "ROW_LOSS": "*fp32"},
                             {}, c.FWD_TILES)
    out["bwd_" + dt] = wgmma(k.clip_grad_rows, {"X": "*" + dt, "Y": "*" + dt, "LSE_R": "*fp32", "LSE_C": "*fp32",
                             "GRAD": "*fp32", "DX": "*" + dt, "ROWDOT": "*fp32", "coef": "fp32",
                             "BLOCK_DO": "constexpr", "HAS_R": "constexpr", "HAS_C": "constexpr"},
                             dict(BLOCK_DO=c.MAX_BLOCK_DO, HAS_R=True, HAS_C=True), c.BWD_TILES)
print(json.dumps(out))
"""


def test_loss_kernels_use_tensor_core_dots_of_the_feature_dtype():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run([sys.executable, "-c", COMPILE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    # forward: the logits; backward: the logits and P @ Y (P rounded to the feature dtype): one type each
    assert found == {f"{p}_{dt}": [WGMMA[dt]] for dt in WGMMA for p in ("fwd", "bwd")}, found
