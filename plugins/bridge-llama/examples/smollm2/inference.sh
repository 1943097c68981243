#!/usr/bin/env bash
# Greedy generation with the Megatron model at TP=1 and TP=3 (TP3=0: TP=1 only; run conversion.sh first).
# Usage: inference.sh [WORK_DIR]   Each continuation is also saved to WORK_DIR/generate-*.txt.
source "$(dirname "$0")/_paths.sh"
PROMPT="${PROMPT:-The capital of France is}"

stage "generate with Megatron TP=1"
bridgectl generate --megatron-path "$WORK/megatron-tp1" --prompt "$PROMPT" --max-new-tokens 12 | tee "$WORK/generate-tp1.txt"
if [ "$TP3" = 1 ]; then
    stage "generate with Megatron TP=3"
    bridgectl generate --megatron-path "$WORK/megatron-tp3" --tp 3 --prompt "$PROMPT" --max-new-tokens 12 \
        | tee "$WORK/generate-tp3.txt"
fi
stage "generate with Megatron TP=1, chat template"
bridgectl generate --megatron-path "$WORK/megatron-tp1" --chat --prompt "What is the capital of France?" \
    --max-new-tokens 12 | tee "$WORK/generate-chat.txt"
