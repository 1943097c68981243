#!/usr/bin/env bash
# Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B) HF folder -> Megatron checkpoint -> HF folder, verified
# (the export keeps the source's expert layout, per expert or stacked).
# Usage: conversion.sh HF_FOLDER [WORK_DIR] [extra import flags, e.g. --tp 2 --ep 4]
set -euo pipefail
HF="$1"; WORK="${2:-qwen2-moe-work}"; shift $(( $# > 1 ? 2 : 1 ))
bridgectl import --hf-model "$HF" --megatron-path "$WORK/megatron" --overwrite "$@"
bridgectl export --megatron-path "$WORK/megatron" --hf-path "$WORK/hf" --overwrite
bridgectl verify --hf-model "$HF" --megatron-path "$WORK/megatron"
