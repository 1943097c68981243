#!/usr/bin/env bash
# The README's main job: SmolLM2-135M-Instruct (GGUF, from PyPI) through Megatron and back, on a CPU.
# Dequantizes the GGUF once into an HF folder, imports it at TP=1 and TP=3 (gloo), generates
# "The capital of France is ..." with the Megatron model, exports to an HF folder, verifies, and
# checks transformers' greedy output on the export against the original's.
HERE="$(cd "$(dirname "$0")" && pwd)"
source "$HERE/_paths.sh"

bash "$HERE/conversion.sh" "$WORK"
bash "$HERE/inference.sh" "$WORK"
for run in tp1 tp3 chat; do
    grep -q "Paris" "$WORK/generate-$run.txt" || { echo "error: the Megatron model ($run) did not say Paris" >&2; exit 1; }
done
cmp -s "$WORK/generate-tp1.txt" "$WORK/generate-tp3.txt" || { echo "error: TP=1 and TP=3 outputs differ" >&2; exit 1; }
stage "transformers on the original and on the exported folder"
python "$HERE/compare_with_transformers.py" "$ORIGINAL" "$WORK/hf" "$WORK/generate-tp1.txt"
stage "demo OK: outputs in $WORK"
