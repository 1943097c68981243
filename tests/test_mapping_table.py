"""``bridgectl plugins --mappings ARCH``: the tensor-name table of the real plugins' bridges."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from _published_configs import MISTRAL_7B_V0_1
from conftest import run_bridgectl

from bridge_core.authoring.mapping_table import MappingRow

REAL_PLUGINS = pytest.mark.needs_dists("bridge-llama", "bridge-qwen")
ROOT = Path(__file__).resolve().parent.parent
L = "decoder.layers.*."
H = "model.layers.*."
QKV = MappingRow(
    f"{L}self_attention.linear_qkv.weight", tuple(f"{H}self_attn.{x}_proj.weight" for x in "qkv"), "QKVMapping", "dim 0"
)
GATED = MappingRow(
    f"{L}mlp.linear_fc1.weight", (f"{H}mlp.gate_proj.weight", f"{H}mlp.up_proj.weight"), "GatedMLPMapping", "dim 0"
)
QWEN3_MOE = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "model_type": "qwen3_moe",
    "hidden_size": 96,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "head_dim": 24,
    "num_hidden_layers": 2,
    "intermediate_size": 160,
    "moe_intermediate_size": 48,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
}


def _bridgectl(*args: str):
    """``bridgectl`` with the real plugins only (the ecosystem env's fixture plugins print on stderr)."""
    return run_bridgectl(*args, BRIDGE_PLUGINS="llama,qwen")


def _folder(tmp_path: Path, config: dict, index: list[str] | None = None) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if index is not None:
        doc = {"metadata": {}, "weight_map": {name: "model-00001-of-00001.safetensors" for name in index}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(doc))
    return folder


@REAL_PLUGINS
def test_llama_table_of_its_toy(clean_plugin_env):
    from bridge_core.authoring.mapping_table import mapping_table

    table = mapping_table("LlamaForCausalLM")
    assert table.source == "toy config 'llama-gqa3' (bridge-llama/tests/test_llama_conformance.py)"
    assert QKV in table.rows and GATED in table.rows
    norm = MappingRow(
        f"{L}input_layernorm.weight",
        (f"{H}input_layernorm.weight",),
        "AutoMapping",
        "replicated",
        (f"{L}self_attention.linear_qkv.layer_norm_weight",),
    )
    assert norm in table.rows  # one row for both megatron-core spellings of the norm
    assert [(r.megatron, r.tp) for r in table.rows if r.used] == [
        ("embedding.word_embeddings.weight", "vocab"),
        ("decoder.final_layernorm.weight", "replicated"),
        ("output_layer.weight", "vocab"),
        (f"{L}input_layernorm.weight", "replicated"),
        (f"{L}self_attention.linear_qkv.weight", "dim 0"),
        (f"{L}self_attention.linear_proj.weight", "dim 1"),
        (f"{L}pre_mlp_layernorm.weight", "replicated"),
        (f"{L}mlp.linear_fc1.weight", "dim 0"),
        (f"{L}mlp.linear_fc2.weight", "dim 1"),
    ]
    (bias,) = [r for r in table.rows if not r.used]  # Llama has no attention bias
    assert bias.megatron == f"{L}self_attention.linear_qkv.bias" and bias.hf[0] == f"{H}self_attn.q_proj.bias"


@REAL_PLUGINS
def test_every_tensor_name_of_a_published_config_is_in_the_printed_table(tmp_path, clean_plugin_env):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from bridge_core.authoring.mapping_table import mapping_table

    folder = _folder(tmp_path, MISTRAL_7B_V0_1)
    values = {k: v for k, v in MISTRAL_7B_V0_1.items() if k != "model_type"}
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(AutoConfig.for_model("mistral", **values))
    patterns = {re.sub(r"\.\d+\.", ".*.", name) for name in hf.state_dict()}
    assert f"{H}self_attn.q_proj.weight" in patterns and "lm_head.weight" in patterns
    proc = _bridgectl("plugins", "--mappings", "MistralForCausalLM", "--hf-model", str(folder))
    assert proc.returncode == 0, proc.stderr
    printed = set(proc.stdout.split())
    assert "MistralForCausalLM: MistralBridge (bridge-llama" in proc.stdout
    assert f"{folder / 'config.json'}" in proc.stdout
    assert patterns <= printed, patterns - printed
    used = {n for r in mapping_table("MistralForCausalLM", folder).rows if r.used for n in r.hf}
    assert used == patterns  # and the table reads nothing else


@REAL_PLUGINS
def test_json_of_a_qwen3_moe_folder_has_expert_rows_and_round_trips(tmp_path, clean_plugin_env):
    from bridge_core.authoring.mapping_table import mapping_table

    folder = _folder(tmp_path, QWEN3_MOE)
    proc = _bridgectl("plugins", "--mappings", "Qwen3MoeForCausalLM", "--hf-model", str(folder), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["architecture"] == "Qwen3MoeForCausalLM" and doc["source"] == str(folder / "config.json")
    rows = [MappingRow.from_dict(r) for r in doc["rows"]]
    assert [r.as_dict() for r in rows] == doc["rows"]
    assert tuple(rows) == mapping_table("Qwen3MoeForCausalLM", folder).rows
    experts = f"{L}mlp.experts."
    assert (
        MappingRow(
            f"{experts}local_experts.*.linear_fc1.weight",
            (f"{H}mlp.experts.*.gate_proj.weight", f"{H}mlp.experts.*.up_proj.weight"),
            "GatedMLPMapping",
            "dim 0 (expert TP)",
            (f"{experts}linear_fc1.weight*",),
        )
        in rows
    )
    assert MappingRow(f"{L}mlp.router.weight", (f"{H}mlp.gate.weight",), "ReplicatedMapping", "replicated") in rows
    (dense,) = [r for r in rows if r.megatron == GATED.megatron]
    assert not dense.used  # every layer of this config is an MoE layer


@REAL_PLUGINS
def test_a_checkpoints_tensor_names_pick_the_stacked_expert_layout(tmp_path, clean_plugin_env):
    from bridge_core.authoring.mapping_table import mapping_table

    config = {
        **{k: v for k, v in QWEN3_MOE.items() if k != "head_dim"},
        "architectures": ["Qwen2MoeForCausalLM"],
        "model_type": "qwen2_moe",
        "shared_expert_intermediate_size": 64,
    }
    per_expert = mapping_table("Qwen2MoeForCausalLM", _folder(tmp_path / "a", config))
    fused = mapping_table("Qwen2MoeForCausalLM", _folder(tmp_path / "b", config, [f"{H}mlp.experts.gate_up_proj"]))
    fc1 = f"{L}mlp.experts.local_experts.*.linear_fc1.weight"
    assert [r.kind for r in per_expert.rows if r.megatron == fc1] == ["GatedMLPMapping"]
    (row,) = [r for r in fused.rows if r.megatron == fc1]
    assert (row.kind, row.hf, row.used) == ("FusedGatedExpertMapping", (f"{H}mlp.experts.gate_up_proj",), True)
    assert fused.source.endswith("config.json, layout from its tensor names")


@REAL_PLUGINS
def test_a_plugin_without_toys_for_the_architecture_is_one_error(tmp_path, clean_plugin_env):
    from bridge_core.authoring.mapping_table import toy_config
    from bridge_core.errors import PluginError
    from bridge_core.plugins.discovery import get_registry

    with pytest.raises(PluginError, match=r"LlamaForCausalLM: no conformance toy in .*; pass --hf-model DIR"):
        toy_config(get_registry().bridge_for("LlamaForCausalLM"), tests=tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mappings", "NoSuchForCausalLM"], "NoSuchForCausalLM is not supported by any loaded plugin"),
        (["--mappings", "LlamaForCausalLM", "--hf-model", "{empty}"], "{empty}/config.json: missing"),
        (["--mappings", "LlamaForCausalLM", "--hf-model", "{empty}/nope"], "{empty}/nope: no such folder"),
        (["--mappings", "LlamaForCausalLM", "--hf-model", "{qwen}"], "{qwen}/config.json: architecture Qwen3Moe"),
        (["--hf-model", "{qwen}"], "--hf-model goes with --mappings ARCH"),
    ],
)
@REAL_PLUGINS
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    qwen = _folder(tmp_path, QWEN3_MOE)
    fill = {"empty": str(empty), "qwen": str(qwen)}
    proc = _bridgectl("plugins", *[a.format(**fill) for a in args])
    err = proc.stderr.strip().splitlines()
    assert (proc.returncode, proc.stdout, len(err)) == (2, "", 1), proc.stderr
    assert err[0].startswith(f"bridgectl plugins: error: {message.format(**fill)}")
