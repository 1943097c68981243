"""``bridgectl import`` / ``export`` on Mixtral toys: each HF expert layout comes back as it went in.

The layout is recorded in the Megatron checkpoint (run_config.json, provider field
``hf_expert_layout``), so the export - a separate process that sees only the checkpoint - writes
per-expert tensors for a per-expert source and stacked ones for a stacked source, bit for bit.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from _mixtral_layouts import fused_copy
from bridge_core.testing.compare import compare_hf_weights
from bridge_core.testing.launch import run_bridgectl
from bridge_core.testing.toy import ToyModel
from test_mixtral_features import TOY


def bridgectl(*args: str) -> subprocess.CompletedProcess:
    return run_bridgectl(*args, plugins="mixtral")


@pytest.mark.parametrize("layout", ["per_expert", "fused"])
def test_import_export_roundtrip_keeps_the_expert_layout(toy_model_factory, tmp_path_factory, tmp_path, layout):
    source = toy_model_factory(ToyModel("MixtralForCausalLM", TOY))
    if layout == "fused":
        source = fused_copy(source, tmp_path_factory.mktemp)
    megatron, hf = tmp_path / "megatron", tmp_path / "hf"
    proc = bridgectl("import", "--hf-model", str(source), "--megatron-path", str(megatron))
    assert proc.returncode == 0, proc.stderr
    run_config = json.loads((megatron / "run_config.json").read_text())
    assert run_config["provider"]["hf_expert_layout"] == layout
    proc = bridgectl("export", "--megatron-path", str(megatron), "--hf-path", str(hf))
    assert proc.returncode == 0, proc.stderr
    assert compare_hf_weights(source, hf) == []
