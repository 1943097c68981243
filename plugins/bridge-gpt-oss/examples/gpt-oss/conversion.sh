#!/usr/bin/env bash
# GptOssForCausalLM: HF folder (bf16 or MXFP4 experts) -> Megatron-LM checkpoint -> HF folder (bf16), then verified.
# The export is verified against itself reread (bit for bit) and the logits against transformers on the
# source (fp32, within 1e-4): an MXFP4 source's experts come back dequantized, so they cannot equal its
# *_blocks/*_scales tensors.
# Usage: conversion.sh HF_FOLDER [WORK_DIR] [import flags, e.g. --ep 8]
# Needs: pip install bridge-core bridge-gpt-oss
set -euo pipefail
HF="${1:?usage: conversion.sh HF_FOLDER [WORK_DIR] [import flags]}"
WORK="${2:-gpt-oss-work}"
shift $(( $# > 1 ? 2 : 1 ))

bridgectl import --hf-model "$HF" --megatron-path "$WORK/megatron" --overwrite "$@"
bridgectl export --megatron-path "$WORK/megatron" --hf-path "$WORK/hf" --overwrite
bridgectl verify --hf-model "$WORK/hf" --megatron-path "$WORK/megatron"
