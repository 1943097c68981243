#!/usr/bin/env bash
# The README's main job: SmolLM2-135M-Instruct (GGUF, from PyPI) through Megatron and back, on a CPU.
# Imports at TP=1 and TP=3 (gloo), generates "The capital of France is ..." with the Megatron model,
# exports to an HF folder, verifies, and checks transformers' greedy output on the export.
HERE="$(cd "$(dirname "$0")" && pwd)"
source "$HERE/_paths.sh"

echo "== conversion (GGUF -> Megatron TP=1 -> HF -> Megatron TP=3, then verify) =="
bash "$HERE/conversion.sh" "$WORK"
echo "== generation with the Megatron model =="
bash "$HERE/inference.sh" "$WORK" | tee "$WORK/generated.txt"
grep -q "Paris" <(head -n 1 "$WORK/generated.txt") || { echo "error: TP=1 did not say Paris" >&2; exit 1; }
grep -q "Paris" <(sed -n 2p "$WORK/generated.txt") || { echo "error: TP=3 did not say Paris" >&2; exit 1; }
echo "== transformers on the exported folder =="
python "$HERE/compare_with_transformers.py" "$GGUF" "$WORK/hf" "$(head -n 1 "$WORK/generated.txt")"
echo "== demo OK: outputs in $WORK =="
