#!/usr/bin/env bash
# The README's main job: SmolLM2-135M-Instruct (GGUF, from PyPI) through Megatron and back, on a CPU.
# Dequantizes the GGUF once into an HF folder, imports it into Megatron, generates "The capital of
# France is ..." with the Megatron model, exports to an HF folder, verifies, and checks transformers'
# greedy output on the export against the original's; then fine-tunes the model on a made-up fact
# (data prepare, train, export) and checks that transformers' answer on the export states it.
# The TP=3 import and generation are left out to keep it short: TP3=1 bash demo.sh runs them too.
HERE="$(cd "$(dirname "$0")" && pwd)"
export TP3="${TP3:-0}"
source "$HERE/_paths.sh"

bash "$HERE/conversion.sh" "$WORK"
bash "$HERE/inference.sh" "$WORK"
runs="tp1 chat"
[ "$TP3" = 1 ] && runs="tp1 tp3 chat"
for run in $runs; do
    grep -q "Paris" "$WORK/generate-$run.txt" || { echo "error: the Megatron model ($run) did not say Paris" >&2; exit 1; }
done
if [ "$TP3" = 1 ]; then
    cmp -s "$WORK/generate-tp1.txt" "$WORK/generate-tp3.txt" || { echo "error: TP=1 and TP=3 outputs differ" >&2; exit 1; }
fi
stage "transformers on the original and on the exported folder"
python "$HERE/compare_with_transformers.py" "$ORIGINAL" "$WORK/hf" "$WORK/generate-tp1.txt"
bash "$HERE/finetune.sh" "$WORK"
stage "demo OK: outputs in $WORK"
