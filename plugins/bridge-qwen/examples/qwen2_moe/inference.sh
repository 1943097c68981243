#!/usr/bin/env bash
# Greedy generation with the Megatron model. Usage: inference.sh WORK_DIR [PROMPT] [extra flags, e.g. --tp 2 --ep 4]
set -euo pipefail
WORK="$1"; PROMPT="${2:-Give me a short introduction to large language models.}"; shift $(( $# > 1 ? 2 : 1 ))
bridgectl generate --megatron-path "$WORK/megatron" --chat --prompt "$PROMPT" --max-new-tokens 64 "$@"
