#!/usr/bin/env bash
# Issue 19's GPU measurements in one device call on ONE H200 (about 4-5 minutes; at most ~8 by the limits below).
#
#   python3 -m pip install -q --no-index --no-deps --upgrade .whl/*.whl   # megatron-core 0.19.2, mbridge, einops
#   bash benchmarks/device_issue19.sh "$OUT"
#   bash benchmarks/device_issue19.sh /tmp/dry --dry-run   # the same code on the CPU, tiny widths (here, first)
#
# Parts (each with its own time limit; a part that fails or runs out leaves {"error": ...} in its JSON
# and the next part still runs):
#   1. weight_sync.py --mode gpu   -> $OUT/weight_sync_gpu.json: a refit (every HF tensor through
#      export_weight_buckets into a receive buffer on the GPU) of Llama-3-8B (32 layers, 16 GB) and of
#      Qwen3-30B-A3B's layer shapes (24 of its 48 layers, 128 experts: ~9,400 tensors, ~31 GB), cached
#      plan / plan remade per refit / mbridge, and the device-to-device copy limit, median of 3 after a warm-up;
#   2. gpu_export.py --shape qwen3_moe -> $OUT/gpu_export_moe.json: export to host (cpu=True) of 4 layers
#      of Qwen3-30B-A3B (1,575 tensors, as in issue 19) against mbridge and the pinned device-to-host limit.
# Progress goes to stdout; everything (the drivers' stdout and stderr) to $OUT/device_issue19.log.
set -u
OUT=${1:?usage: bash benchmarks/device_issue19.sh OUT_FOLDER [--dry-run]}
DRY=${2:-}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
LOG="$OUT/device_issue19.log"
: >"$LOG"

if [ "$DRY" = "--dry-run" ]; then
    WS_EXTRA=(--device cpu --tiny --layers 2 --moe-layers 2 --bucket-mb 0.05)
    GE_EXTRA=(--allow-cpu --tiny --layers 2)
else
    WS_EXTRA=(--layers 32 --moe-layers 24 --bucket-mb 512)
    GE_EXTRA=(--layers 4)
fi

say() { echo "[issue19 $(date -u +%H:%M:%S)] $*"; }

# part NAME JSON SECONDS COMMAND...: run it under a time limit; progress (stderr) to the screen and the log
part() {
    local name=$1 json=$2 limit=$3
    shift 3
    say "$name: start (limit ${limit} s)"
    local t0=$SECONDS
    timeout -k 20 "$limit" "$@" 2>&1 >>"$LOG" | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    say "$name: exit $rc after $((SECONDS - t0)) s"
    "$PYTHON" - "$json" "$name" "$rc" "$LOG" <<'EOF'
import json, sys
from pathlib import Path
path, name, rc, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
try:
    doc = json.loads(Path(path).read_text())
except (OSError, ValueError) as exc:
    doc = {"error": f"{name}: exit {rc} and no JSON ({type(exc).__name__})", "log_tail": log.read_text()[-4000:]}
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"  {name}: FAILED (exit {rc}); the log's tail is in {path}")
    sys.exit(0)
for run in doc.get("runs", [doc]):
    if "error" in run:
        print(f"  {run.get('shape', name)}: FAILED: {run['error']}: {run.get('stderr_tail', '')[-600:]}")
        continue
    if "median_s" in run:  # weight_sync
        med = ", ".join(f"{s} {t:.3f} s" for s, t in run["median_s"].items())
        print(f"  {run['shape']}: {run['bytes'] / 1e9:.2f} GB, {run['tensors']} tensors: {med}; "
              f"copy limit {run['copy_limit_GB_per_s']:.0f} GB/s; errors {run['errors'] or 'none'}; "
              f"same as cached: {run['same_as_cached']}")
    elif "median" in run:  # gpu_export
        med = ", ".join(f"{s} {t:.3f} s" for s, t in run["median"].items())
        print(f"  {run.get('shape')} TP={run['tp']}: {run['bytes'] / 1e9:.2f} GB, {run['tensors']} tensors: {med}; "
              f"pinned limit {run['pinned_d2h_GB_per_s']} GB/s, of limit {run['of_pinned_limit']}; "
              f"checks: {run['checks']}; errors {run['errors'] or 'none'}")
EOF
}

say "python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])'), out $OUT${DRY:+ ($DRY)}"
"$PYTHON" -c 'import torch, megatron.core, transformers; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "megatron-core", megatron.core.__version__, "transformers", transformers.__version__)' 2>&1 | tail -1
"$PYTHON" -c 'import mbridge; print("mbridge imports")' 2>&1 | tail -1

part weight_sync_gpu "$OUT/weight_sync_gpu.json" 370 \
    "$PYTHON" benchmarks/weight_sync.py --mode gpu "${WS_EXTRA[@]}" --repeats 3 --timeout 180 \
    --out "$OUT/weight_sync_gpu.json"

part gpu_export_moe "$OUT/gpu_export_moe.json" 110 \
    "$PYTHON" benchmarks/gpu_export.py --shape qwen3_moe "${GE_EXTRA[@]}" --tp 1 --repeats 3 --timeout 100 \
    --out "$OUT/gpu_export_moe.json"

say "done in ${SECONDS} s; files: $(cd "$OUT" && ls | tr '\n' ' ')"
