#!/usr/bin/env bash
# GemmaForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM: HF folder -> Megatron-LM checkpoint -> HF folder, then verified
# (every exported tensor bit-identical to the source, fp32 logits within 1e-4).
# Usage: conversion.sh HF_FOLDER [WORK_DIR] [import flags, e.g. --tp 2 --pp 2]
# Needs: pip install bridge-core bridge-gemma. Example: conversion.sh path/to/gemma-2-2b gemma-work --tp 2
set -euo pipefail
HF="${1:?usage: conversion.sh HF_FOLDER [WORK_DIR] [import flags]}"
WORK="${2:-gemma-work}"
shift $(( $# > 1 ? 2 : 1 ))

bridgectl import --hf-model "$HF" --megatron-path "$WORK/megatron" --overwrite "$@"
bridgectl export --megatron-path "$WORK/megatron" --hf-path "$WORK/hf" --overwrite
bridgectl verify --hf-model "$HF" --megatron-path "$WORK/megatron"
