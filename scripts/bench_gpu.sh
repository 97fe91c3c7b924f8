#!/usr/bin/env bash
# `make bench-gpu [OUT=DIR]`: everything of issue 12 that needs a GPU, in one call of at most 8 minutes, every
# result a file under DIR (default: $OUT, else runs/bench-gpu):
#   env.json, nvidia-smi.txt            the machine, versions, what could not be imported
#   e2e_vit-b-16.json (+ .log)          our trainer step vs compiled OpenCLIP, ViT-B/16, batch 256, clipping 1.0 on
#                                       both sides: ZeRO-2 and master_adamw; e2e_vit-b-16_fp8.json with train.fp8
#   optimizer_step.txt/.json            issue 19: the optimizer step with clipping 1.0, DeepSpeed ZeRO-2 beside
#                                       train.optimizer=master_adamw (ZeRO-0) and plain fused AdamW, host syncs/step
#   e2e_vit-b-16_noclip.json            the e2e without clipping (OpenCLIP's default), ZeRO-1 and -2
#   kernel_tests.log/.xml, kernel_errors.jsonl   tests/kernels_gpu (bf16, fp16, fp32 vs float64; the 16-bit loss
#                                       paths; train.fp8 vs bf16 on sm_89+), observed errors
#   kernels_bench.json (+ .log)         attention vs every SDPA backend, loss vs ClipLoss at B = 16k/32k/64k
#   kernels_record.json, records.json   the train.kernels=auto record of this GPU, merged into kernels/records.json
#   e2e_vit-b-16_record.json            the e2e again with that record, when it picks a Triton kernel anywhere
#   e2e_vit-b-32.json, e2e_vit-l-14.json   optional sizes, while time is left (clipping 1.0, ZeRO-2 and master_adamw)
#   profile.txt, profile.json          pretrain.profile_step: our step's phases beside the plain model and OpenCLIP
#   stages.json, summary.json, bench-gpu.log
#   bench-gpu.tgz                       when DIR is the device tool's $OUT: all of the above (it returns 8 files)
# On a machine without a CUDA GPU it says so, skips the GPU parts, and still runs what it can (imports, test
# collection, kernels.bench's no-GPU exit, the CPU end-to-end benchmark in a short form): a dry run.
# Carried wheels (../shared/gpu/README.md): .whl/*.whl are installed into a temporary site when the host lacks
# deepspeed, megatron-core, open_clip, webdataset or pytest. Prepare them with scripts/gpu_wheels.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-runs/bench-gpu}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
START=$(date +%s)
BUDGET=${BENCH_GPU_BUDGET:-465}  # seconds for the whole script (the call may take 480)
STAGES=()
log() { echo "[bench-gpu +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT_DIR/bench-gpu.log"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
stage() {  # stage NAME SECONDS CMD...: run with a time limit, log its rc; never stops the script
  local name=$1 limit=$2; shift 2
  local avail; avail=$(left)
  if (( avail < 20 )); then log "skip $name: out of time"; STAGES+=("\"$name\": \"skipped (time)\""); return 0; fi
  (( limit > avail )) && limit=$avail
  log "run $name (limit ${limit}s): $*"
  local t0; t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  log "done $name rc=$rc in $(( $(date +%s) - t0 ))s$([ $rc = 124 ] && echo ' (time limit)')"
  STAGES+=("\"$name\": $rc")
  return 0
}

if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
GPU=$($PY -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
log "python: $PY; CUDA GPU: $([ "$GPU" = 1 ] && echo yes || echo no); results in $OUT_DIR"

need="deepspeed megatron.core open_clip webdataset pytest triton"
missing=$($PY -c "
import importlib.util as u
print(' '.join(m for m in '$need'.split() if u.find_spec(m.split('.')[0]) is None))" 2>/dev/null)
if [ -n "$missing" ] && compgen -G ".whl/*.whl" > /dev/null; then
  site=$(mktemp -d)
  log "installing the carried wheels (missing: $missing) into $site"
  $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" .whl/*.whl \
    >> "$OUT_DIR/bench-gpu.log" 2>&1 || log "wheel install failed (see above)"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
elif [ -n "$missing" ]; then
  log "missing modules: $missing, and no .whl/ to install them from (scripts/gpu_wheels.sh makes it)"
fi
if [ "${TORCH_CUDA_ARCH_LIST:-}" = "9.0a" ]; then export TORCH_CUDA_ARCH_LIST=9.0; fi  # 9.0a breaks DeepSpeed JIT
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1

$PY - "$OUT_DIR/env.json" <<'EOF' >> "$OUT_DIR/bench-gpu.log" 2>&1
import importlib, json, os, platform, sys
env = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
       "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST"), "modules": {}}
for m in ("torch", "triton", "deepspeed", "megatron.core", "open_clip", "webdataset", "pytest", "numpy"):
    try:
        env["modules"][m] = getattr(importlib.import_module(m), "__version__", "?")
    except Exception as e:  # noqa: BLE001
        env["modules"][m] = f"missing ({e.__class__.__name__}: {e})"
import torch
env["cuda"] = torch.cuda.is_available()
if env["cuda"]:
    p = torch.cuda.get_device_properties(0)
    env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
               cuda=torch.version.cuda)
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(json.dumps(env))
EOF
command -v nvidia-smi > /dev/null && nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1

if [ "$GPU" = 1 ]; then
  # 1. the headline first: ours vs compiled OpenCLIP at ViT-B/16, batch 256 (kernels auto: the shipped record),
  #    gradient clipping 1.0 on both sides (issue 19): today's ZeRO-2 and master_adamw
  stage e2e_vit-b-16 240 $PY -m pretrain.bench --device cuda --model vit-b-16 --batch 256 --zero 2,master \
    --clip 1.0 --out "$OUT_DIR/e2e_vit-b-16.json"
  # 1a. the same with train.fp8 where the GPU has fp8 (sm_89+) and torchao is importable
  if $PY -c "import sys, torch, importlib.util as u; sys.exit(0 if torch.cuda.get_device_capability() >= (8, 9) \
      and u.find_spec('torchao') else 1)" 2>/dev/null; then
    stage e2e_vit-b-16_fp8 200 $PY -m pretrain.bench --device cuda --model vit-b-16 --batch 256 --zero 2,master \
      --clip 1.0 --fp8 --out "$OUT_DIR/e2e_vit-b-16_fp8.json"
  else
    log "skip e2e_vit-b-16_fp8: no sm_89+ GPU or no torchao"
  fi
  # 1b. issue 19: the optimizer step with gradient clipping on, today's ZeRO-2 beside master_adamw and plain AdamW
  stage optimizer_step 150 $PY -m pretrain.profile_step --device cuda --variants ours,ours_master,plain --clip 1.0 \
    --budget 140 --out "$OUT_DIR/optimizer_step.txt"
  # 2. the kernels on the GPU, bf16 / fp16 / fp32 against float64
  stage kernel_tests 120 env GROWCLIP_KERNELS_POISON=1 GROWCLIP_GPU_REPORT="$OUT_DIR/kernel_errors.jsonl" \
    $PY -m pytest -q -p no:cacheprovider tests/kernels_gpu --junitxml "$OUT_DIR/kernel_tests.xml"
  # 3. kernel benchmark, and the auto record it implies
  stage kernels_bench 130 $PY -m kernels.bench --out "$OUT_DIR/kernels_bench.json" \
    --record "$OUT_DIR/kernels_record.json"
  if [ -f "$OUT_DIR/kernels_record.json" ]; then
    $PY -m kernels.auto --merge "$OUT_DIR/kernels_record.json" > "$OUT_DIR/kernels_auto.json" 2>&1
    cp kernels/records.json "$OUT_DIR/records.json"
    if grep -q '"triton"' "$OUT_DIR/kernels_record.json" && (( $(left) > 140 )); then
      stage e2e_vit-b-16_record 200 $PY -m pretrain.bench --device cuda --model vit-b-16 --batch 256 --zero 2 \
        --out "$OUT_DIR/e2e_vit-b-16_record.json"
    fi
  fi
  # 4. where our step's time goes (eager phases beside the plain model and OpenCLIP, profiler tables)
  if (( $(left) > 150 )); then
    stage profile 90 $PY -m pretrain.profile_step --device cuda --variants ours,plain,open_clip --budget 80 \
      --out "$OUT_DIR/profile.txt"
  fi
  # 5. optional: the e2e without clipping (OpenCLIP's default) at ZeRO-1/2; other sizes while time is left
  if (( $(left) > 150 )); then
    stage e2e_vit-b-16_noclip 180 $PY -m pretrain.bench --device cuda --model vit-b-16 --batch 256 --zero 1,2 \
      --out "$OUT_DIR/e2e_vit-b-16_noclip.json"
  fi
  if (( $(left) > 150 )); then
    stage e2e_vit-b-32 150 $PY -m pretrain.bench --device cuda --model vit-b-32 --batch 512 --zero 2,master \
      --clip 1.0 --out "$OUT_DIR/e2e_vit-b-32.json"
  fi
  if (( $(left) > 150 )); then
    stage e2e_vit-l-14 150 $PY -m pretrain.bench --device cuda --model vit-l-14 --batch 128 --zero 2,master \
      --clip 1.0 --out "$OUT_DIR/e2e_vit-l-14.json"
  fi
else
  log "no CUDA GPU: skipping the GPU kernel tests, kernels/bench.py timings and the GPU end-to-end benchmark;" \
      "dry run of the rest"
  stage kernel_tests 120 env GROWCLIP_GPU_REPORT="$OUT_DIR/kernel_errors.jsonl" \
    $PY -m pytest -q -p no:cacheprovider tests/kernels_gpu --junitxml "$OUT_DIR/kernel_tests.xml"
  stage kernels_bench 60 $PY -m kernels.bench --out "$OUT_DIR/kernels_bench.json" \
    --record "$OUT_DIR/kernels_record.json"
  stage kernels_auto 60 $PY -m kernels.auto
  stage optimizer_step 120 $PY -m pretrain.profile_step --device cpu --batch 16 --steps 2 --warmup 1 \
    --variants ours,ours_master,plain --clip 0.05 --out "$OUT_DIR/optimizer_step.txt"
  stage e2e_cpu_tiny 300 $PY -m pretrain.bench --device cpu --steps 3 --warmup 1 --compile off --zero 2 \
    --out "$OUT_DIR/e2e_cpu_tiny.json"
fi

(IFS=,; echo "{${STAGES[*]}}") > "$OUT_DIR/stages.json"
$PY - "$OUT_DIR" <<'EOF' >> "$OUT_DIR/bench-gpu.log" 2>&1
import glob, json, os, sys
out = sys.argv[1]
summary = {"stages": json.load(open(os.path.join(out, "stages.json")))}
for f in sorted(glob.glob(os.path.join(out, "e2e_*.json"))):
    r = json.load(open(f))
    summary[os.path.basename(f)[:-5]] = {
        "device": r["device"], "model": r["model"], "batch": r["batch"], "ratio": r["ratio"],
        "open_clip": {k: r["open_clip_side"].get(k) for k in ("samples_per_s", "mfu", "peak_gib")},
        "ours": {z: {k: v.get(k) for k in ("samples_per_s", "mfu", "peak_gib", "ratio_vs_open_clip")}
                 for z, v in r["ours"].items()}}
opt = os.path.join(out, "optimizer_step.json")
if os.path.exists(opt):
    summary["optimizer_step"] = {k: v if isinstance(v, str) else
                                 {"optimizer_step_ms": v["phases_ms_synced"].get("optimizer step"),
                                  "ms_per_step": v["ms_per_step"], "host_syncs_per_step": v.get("host_syncs_per_step")}
                                 for k, v in json.load(open(opt))["variants"].items()}
bench = os.path.join(out, "kernels_bench.json")
if os.path.exists(bench):
    summary["kernels"] = json.load(open(bench)).get("summary")
errors = os.path.join(out, "kernel_errors.jsonl")
if os.path.exists(errors):
    rows = [json.loads(line) for line in open(errors)]
    summary["kernel_max_errors"] = {}
    for r in rows:
        key = f"{r['check']}/{r['dtype'].split('.')[-1]}"
        cur = summary["kernel_max_errors"].setdefault(key, {})
        for k, v in r.items():
            if isinstance(v, float):
                cur[k] = max(cur.get(k, 0.0), v)
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print(json.dumps(summary, indent=1))
EOF
log "finished in $(( $(date +%s) - START ))s; summary in $OUT_DIR/summary.json"
# The device tool brings back at most 8 files of $OUT: there, everything goes into one archive beside the summary
# and the log (its first run lost the kernel benchmark's files that way).
if [ -n "${OUT:-}" ] && [ -d "$OUT" ] && [ "$OUT_DIR" = "$(cd "$OUT" && pwd)" ]; then
  tar czf /tmp/bench-gpu.tgz -C "$OUT_DIR" . && mv /tmp/bench-gpu.tgz "$OUT_DIR/bench-gpu.tgz" && \
    find "$OUT_DIR" -mindepth 1 -maxdepth 1 ! -name bench-gpu.tgz ! -name summary.json ! -name bench-gpu.log \
      -exec rm -rf {} +
fi
