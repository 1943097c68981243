#!/usr/bin/env bash
# The test suite with a GPU visible, on ONE GPU machine: core and every plugin, each its own pytest
# session (as tox runs them: one plugin's BRIDGE_PLUGINS must not block another's), all at once.
#
#   python scripts/build_dists.py                      # here: dist/*.whl (carry dist and .whl)
#   bash scripts/gpu_suite.sh "$OUT" [pytest args...]  # there: installs dist/ and .whl/ into its python
#
# The wheels go into the python's own environment (a bare, lent machine): tests run `bridgectl`
# from beside sys.executable and start subprocesses with a clean environment. Needs pytest-xdist
# (WORKERS processes a session; the lent GPU machines have it).
# Writes $OUT/gpu_suite.txt (each session's summary line and failures) and $OUT/gpu_suite_logs.tar.gz.
set -u
OUT=${1:?usage: bash scripts/gpu_suite.sh OUT_FOLDER [pytest args...]}
shift
PYTHON=${PYTHON:-python3}
WORKERS=${WORKERS:-3}
LIMIT=${LIMIT:-480}
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
shopt -s nullglob
wheels=(.whl/*.whl dist/*.whl)
[ ${#wheels[@]} -gt 0 ] || { echo "gpu_suite.sh: no wheels in dist/ (run python scripts/build_dists.py)" >&2; exit 2; }
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "${wheels[@]}" || exit 1
export PYTHONDONTWRITEBYTECODE=1 BRIDGE_STRICT_PLUGINS=1
LOGS=$(mktemp -d)
"$PYTHON" -c 'import torch, megatron.core; print("torch", torch.__version__, "gpus", torch.cuda.device_count(), "megatron-core", megatron.core.__version__)'

suites=(core/tests)
for p in plugins/*/tests; do suites+=("$p"); done
for s in "${suites[@]}"; do
    name=$(echo "$s" | cut -d/ -f1-2 | tr / _)
    timeout -k 20 "$LIMIT" "$PYTHON" -m pytest -p no:cacheprovider -q -rfE -n "$WORKERS" "$s" "$@" \
        >"$LOGS/$name.log" 2>&1 &
done
wait

: >"$OUT/gpu_suite.txt"
for log in "$LOGS"/*.log; do
    {
        echo "== $(basename "$log" .log): $(grep -E '^(=+ )?[0-9]+ (passed|failed|error)' "$log" | tail -1)"
        grep -E '^(FAILED|ERROR) ' "$log"
    } >>"$OUT/gpu_suite.txt"
done
tar -czf "$OUT/gpu_suite_logs.tar.gz" -C "$LOGS" .
cat "$OUT/gpu_suite.txt"
