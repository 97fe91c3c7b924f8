"""The end-to-end benchmark (pretrain/bench.py) and the GPU script, as far as a CPU takes them: the benchmark runs
both sides on the tiny model and reports the ratio; the scripts parse (`make bench-gpu`'s dry run is recorded in
docs/perf.md: it takes a minute or more)."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("script", ["scripts/bench_gpu.sh", "scripts/gpu_wheels.sh"])
def test_gpu_scripts_parse(script):
    subprocess.run(["bash", "-n", script], check=True, cwd=ROOT)


def test_cpu_benchmark_reports_both_sides_and_the_ratio(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pretrain.bench", "--device", "cpu", "--batch", "16", "--steps", "2",
                           "--warmup", "1", "--compile", "off", "--zero", "1,2", "--log-every", "1", "--rounds", "2",
                           "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "ratio ours/OpenCLIP samples/s (tiny, batch 16, cpu):" in proc.stdout
    r = json.loads(out.read_text())
    oc, ours = r["open_clip_side"], r["ours"]
    assert set(ours) == {"zero1", "zero2"} and oc["samples_per_s"] > 0
    for side in ours.values():  # the same network on both sides
        assert side["params"] == oc["params"] and side["samples_per_s"] > 0 and side["loss"] > 0
        assert side["kernels"] == {"attention": "torch", "loss": "torch", "record": None}
        # interleaved timing on a CPU: the ratio is per pair, against the OpenCLIP chunks timed beside it
        assert side["ratio_vs_open_clip"] == pytest.approx(side["samples_per_s"] / side["open_clip_samples_per_s"],
                                                           rel=1e-2)
    assert r["ratio"] == max(side["ratio_vs_open_clip"] for side in ours.values())


def test_profile_step_splits_our_step_into_phases_beside_the_plain_model(tmp_path):
    """pretrain.profile_step on the tiny model: both variants timed, every phase of ours measured, the profiler's
    tables written (what found the misaligned ZeRO parameters on an H200: docs/perf.md)."""
    out = tmp_path / "profile.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pretrain.profile_step", "--device", "cpu", "--batch", "16",
                           "--steps", "2", "--warmup", "1", "--variants", "ours,ours_master,plain", "--clip", "0.05",
                           "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    r = json.loads(out.with_suffix(".json").read_text())["variants"]
    for name in ("ours", "ours_master"):  # today's ZeRO-2 step and master_adamw's (ZeRO-0), clipping on both
        assert set(r[name]["phases_ms_synced"]) == {"forward+loss", "backward", "optimizer step", "ema", "record"}
    assert set(r["plain"]["phases_ms_synced"]) == {"forward+loss", "backward", "optimizer step"}
    for v in r.values():
        assert v["ms_per_step"] > 0 and v["phases_ms_synced"]["backward"] > 0
    text = out.read_text()
    assert text.count("--- top ops by device time") == 3 and "aten::" in text
