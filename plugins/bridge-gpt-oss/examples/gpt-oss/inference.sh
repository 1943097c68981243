#!/usr/bin/env bash
# Greedy generation with the converted Megatron model (run conversion.sh first).
# Usage: inference.sh WORK_DIR [PROMPT] [flags, e.g. --ep 8 --chat]
set -euo pipefail
WORK="${1:?usage: inference.sh WORK_DIR [PROMPT] [flags]}"
PROMPT="${2:-The capital of France is}"
shift $(( $# > 1 ? 2 : 1 ))

bridgectl generate --megatron-path "$WORK/megatron" --prompt "$PROMPT" --max-new-tokens 32 "$@"
