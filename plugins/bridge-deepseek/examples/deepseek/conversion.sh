#!/usr/bin/env bash
# DeepseekV3ForCausalLM or DeepseekV2ForCausalLM: HF folder -> Megatron-LM checkpoint -> HF folder, then verified
# (every exported tensor bit-identical to the source, MTP layers included; an FP8 source exports its dequantized
# bf16 weights; fp32 logits within 1e-4).
# Usage: conversion.sh HF_FOLDER [WORK_DIR] [import flags, e.g. --tp 2 --ep 4]
# Needs: pip install bridge-core bridge-deepseek
set -euo pipefail
HF="${1:?usage: conversion.sh HF_FOLDER [WORK_DIR] [import flags]}"
WORK="${2:-deepseek-work}"
shift $(( $# > 1 ? 2 : 1 ))

bridgectl import --hf-model "$HF" --megatron-path "$WORK/megatron" --overwrite "$@"
bridgectl export --megatron-path "$WORK/megatron" --hf-path "$WORK/hf" --overwrite
bridgectl verify --hf-model "$HF" --megatron-path "$WORK/megatron"
