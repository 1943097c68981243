"""``bridgectl import`` / ``export`` on OLMo toys: the Megatron-LM checkpoint comes back bit for bit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from _olmo_helpers import fused_copy
from bridge_core.testing.compare import compare_hf_weights
from bridge_core.testing.launch import run_bridgectl
from bridge_core.testing.toy import ToyModel
from test_olmo2_conformance import TOY as OLMO2
from test_olmoe_conformance import TOY as OLMOE


def bridgectl(*args: str) -> subprocess.CompletedProcess:
    return run_bridgectl(*args, plugins="olmo")


def roundtrip(source: Path, work: Path) -> dict:
    """Import, export, compare bit for bit; returns the checkpoint's run_config.json."""
    megatron, hf = work / "megatron", work / "hf"
    proc = bridgectl("import", "--hf-model", str(source), "--megatron-path", str(megatron))
    assert proc.returncode == 0, proc.stderr
    run_config = json.loads((megatron / "run_config.json").read_text())
    proc = bridgectl("export", "--megatron-path", str(megatron), "--hf-path", str(hf))
    assert proc.returncode == 0, proc.stderr
    assert compare_hf_weights(source, hf) == []
    return run_config


def test_olmo2_import_export_roundtrip(toy_model_factory, tmp_path):
    roundtrip(toy_model_factory(ToyModel("Olmo2ForCausalLM", OLMO2)), tmp_path)


@pytest.mark.parametrize("layout", ["per_expert", "fused"])
def test_olmoe_import_export_roundtrip_keeps_the_expert_layout(toy_model_factory, tmp_path_factory, tmp_path, layout):
    source = toy_model_factory(ToyModel("OlmoeForCausalLM", OLMOE))
    if layout == "fused":
        source = fused_copy(source, tmp_path_factory.mktemp)
    assert roundtrip(source, tmp_path)["provider"]["hf_expert_layout"] == layout
