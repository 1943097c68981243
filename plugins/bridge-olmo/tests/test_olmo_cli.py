"""``bridgectl import`` / ``export`` on OLMo toys: the Megatron-LM checkpoint comes back bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bridge_core.testing.compare import compare_hf_weights
from bridge_core.testing.toy import ToyModel
from test_olmo2_conformance import TOY as OLMO2


def bridgectl(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "bridgectl"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")},
        "BRIDGE_PLUGINS": "olmo",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600, env=env)


def roundtrip(source: Path, work: Path) -> None:
    megatron, hf = work / "megatron", work / "hf"
    proc = bridgectl("import", "--hf-model", str(source), "--megatron-path", str(megatron))
    assert proc.returncode == 0, proc.stderr
    proc = bridgectl("export", "--megatron-path", str(megatron), "--hf-path", str(hf))
    assert proc.returncode == 0, proc.stderr
    assert compare_hf_weights(source, hf) == []


def test_olmo2_import_export_roundtrip(toy_model_factory, tmp_path):
    roundtrip(toy_model_factory(ToyModel("Olmo2ForCausalLM", OLMO2)), tmp_path)
