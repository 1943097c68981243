#!/usr/bin/env bash
# Qwen3 (dense or MoE) HF folder -> Megatron checkpoint -> HF folder, verified.
# Usage: conversion.sh HF_FOLDER [WORK_DIR] [extra import flags, e.g. --tp 2 --ep 2]
set -euo pipefail
HF="$1"; WORK="${2:-qwen3-work}"; shift $(( $# > 1 ? 2 : 1 ))
bridgectl import --hf-model "$HF" --megatron-path "$WORK/megatron" --overwrite "$@"
bridgectl export --megatron-path "$WORK/megatron" --hf-path "$WORK/hf" --overwrite
bridgectl verify --hf-model "$HF" --megatron-path "$WORK/megatron"
