"""DeepSeek's features, each shown to matter, and the configurations the bridges refuse.

Ablations flip one feature of an otherwise exact conversion (group-limited routing, the expert bias,
YaRN's mscale_all_dim, the routed scaling factor, V2's softmax-before-top-k) and check that
transformers' logits are then missed by far. Refusals are one-line ``ConfigError``s naming the keys.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _deepseek_toys import V2_TOY, V3_TOY, YARN, with_expert_bias
from bridge_core import AutoBridge
from bridge_core.errors import ConfigError
from bridge_core.runtime.inference import forward_logits
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.compare import compare_hf_weights, max_abs_diff
from bridge_core.testing.launch import run_bridgectl
from bridge_core.testing.toy import ToyModel, hf_logits, sample_ids

V3 = ToyModel("DeepseekV3ForCausalLM", V3_TOY)


@pytest.fixture(scope="module")
def v3(toy_model_factory, tmp_path_factory) -> Path:
    return with_expert_bias(toy_model_factory(V3), tmp_path_factory.mktemp)


@pytest.fixture(scope="module")
def v2(toy_model_factory) -> Path:
    return toy_model_factory(ToyModel("DeepseekV2ForCausalLM", V2_TOY, seed=2))


def max_diff(folder: Path, after_load=None, **settings) -> float:
    """max |Megatron - transformers| logits of ``folder`` at TP=1 with provider ``settings`` overridden
    (and ``after_load(model)`` applied to the loaded model)."""
    bridge = AutoBridge.from_hf_pretrained(folder)
    provider = bridge.to_megatron_provider()
    for key, value in settings.items():
        setattr(provider, key, value)
    provider.finalize()
    ids = sample_ids(1000, seq=32)
    try:
        model = provider.provide_distributed_model(wrap_with_ddp=False)
        bridge.load_hf_weights(model)
        if after_load is not None:
            after_load(model[0])
        logits = forward_logits(model, ids, vocab_size=1000)
    finally:
        destroy_model_parallel()
    return max_abs_diff(logits, hf_logits(folder, ids))


def zero_expert_bias(model) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("router.expert_bias"):
                param.zero_()


def test_v3_settings_translate(v3):
    p = AutoBridge.from_hf_pretrained(v3).to_megatron_provider()
    assert p.multi_latent_attention and p.qk_layernorm and p.moe_layer_freq == [0, 1, 1]
    assert (p.q_lora_rank, p.kv_lora_rank, p.qk_head_dim, p.qk_pos_emb_head_dim, p.v_head_dim) == (48, 32, 16, 8, 16)
    assert (p.moe_router_score_function, p.moe_router_enable_expert_bias, p.moe_router_pre_softmax) == (
        "sigmoid",
        True,
        False,
    )
    assert (p.moe_router_num_groups, p.moe_router_group_topk, p.moe_router_topk_scaling_factor) == (4, 2, 2.5)
    assert (p.moe_shared_expert_intermediate_size, p.moe_ffn_hidden_size, p.ffn_hidden_size) == (32, 32, 96)
    assert (p.rope_type, p.rotary_scaling_factor, p.mscale, p.mscale_all_dim) == ("yarn", 4.0, 1.0, 1.0)
    assert (p.original_max_position_embeddings, p.mtp_num_layers) == (128, None)


@pytest.mark.parametrize(
    ("feature", "after_load", "settings"),
    [
        ("group routing", None, {"moe_router_num_groups": None, "moe_router_group_topk": None}),
        ("expert bias", zero_expert_bias, {}),
        ("yarn mscale_all_dim", None, {"mscale_all_dim": 0.0}),
        ("routed scaling", None, {"moe_router_topk_scaling_factor": 1.0}),
    ],
)
def test_v3_feature_matters(v3, feature, after_load, settings):
    assert max_diff(v3) <= 1e-4
    off = max_diff(v3, after_load, **settings)
    assert off > 1e-3, f"without {feature} the logits move by only {off:.2g}"


def test_v2_routing_is_softmax_before_topk(v2):
    p = AutoBridge.from_hf_pretrained(v2).to_megatron_provider()
    assert (p.moe_router_score_function, p.moe_router_pre_softmax, p.q_lora_rank) == ("softmax", True, None)
    assert (p.moe_router_enable_expert_bias, p.moe_router_num_groups, p.rope_type) == (False, None, "rope")
    assert max_diff(v2) <= 1e-4
    renormalised = max_diff(v2, moe_router_pre_softmax=False)
    assert renormalised > 1e-2, f"renormalised top-k moves logits by only {renormalised:.2g}"


def test_v3_bf16_roundtrip_keeps_fp32_router_tensors(toy_model_factory, tmp_path_factory, tmp_path):
    folder = with_expert_bias(
        toy_model_factory(ToyModel("DeepseekV3ForCausalLM", V3_TOY, dtype="bfloat16")), tmp_path_factory.mktemp
    )
    bridge = AutoBridge.from_hf_pretrained(folder)
    try:
        model = bridge.to_megatron_provider(load_weights=True).provide_distributed_model(wrap_with_ddp=False)
        bridge.save_hf_pretrained(model, tmp_path / "out")
    finally:
        destroy_model_parallel()
    assert compare_hf_weights(folder, tmp_path / "out") == []


# -- refusals -------------------------------------------------------------------------------------
def _config_folder(tmp_path: Path, architecture: str, values: dict) -> Path:
    from transformers import AutoConfig

    config = AutoConfig.for_model(
        values["model_type"], architectures=[architecture], **{k: v for k, v in values.items() if k != "model_type"}
    )
    config.save_pretrained(tmp_path)
    return tmp_path


REFUSED = [
    ("DeepseekV3ForCausalLM", V3_TOY, {"topk_group": 1}, ("n_group=4", "topk_group=1", "num_experts_per_tok=4")),
    (
        "DeepseekV3ForCausalLM",
        V3_TOY,
        {"num_experts_per_tok": 6, "topk_group": 2},
        ("topk_group=2", "num_experts_per_tok=6"),
    ),
    ("DeepseekV3ForCausalLM", V3_TOY, {"norm_topk_prob": False}, ("norm_topk_prob",)),
    ("DeepseekV3ForCausalLM", V3_TOY, {"rope_interleave": False}, ("rope_interleave",)),
    (
        "DeepseekV3ForCausalLM",
        V3_TOY,
        {"rope_parameters": {**YARN, "mscale": 0.0}},
        ("mscale_all_dim", "mscale"),
    ),
    ("DeepseekV3ForCausalLM", V3_TOY, {"rope_parameters": {**YARN, "attention_factor": 2.0}}, ("attention_factor",)),
    (
        "DeepseekV2ForCausalLM",
        V2_TOY,
        {"topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 2},
        ("topk_method", "n_group=4", "topk_group=2"),
    ),
    ("DeepseekV2ForCausalLM", V2_TOY, {"norm_topk_prob": True}, ("norm_topk_prob",)),
    ("DeepseekV2ForCausalLM", V2_TOY, {"num_key_value_heads": 2}, ("num_key_value_heads",)),
]


@pytest.mark.parametrize(("architecture", "toy", "change", "named"), REFUSED)
def test_refused_configs_name_their_keys(tmp_path, architecture, toy, change, named):
    folder = _config_folder(tmp_path, architecture, {**toy, **change})
    with pytest.raises(ConfigError) as err:
        AutoBridge.from_hf_pretrained(folder).to_megatron_provider()
    message = str(err.value)
    assert "\n" not in message
    for key in named:
        assert key in message, message


def test_v2_group_limited_greedy_with_every_group_is_accepted(tmp_path):
    values = {**V2_TOY, "topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 4}
    provider = AutoBridge.from_hf_pretrained(
        _config_folder(tmp_path, "DeepseekV2ForCausalLM", values)
    ).to_megatron_provider()
    assert provider.moe_router_num_groups is None


def test_cli_refuses_binding_groups_with_one_line(tmp_path):
    folder = _config_folder(tmp_path / "hf", "DeepseekV3ForCausalLM", {**V3_TOY, "topk_group": 1})
    proc = run_bridgectl(
        "import", "--hf-model", str(folder), "--megatron-path", str(tmp_path / "ckpt"), plugins="deepseek"
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert any("n_group=4, topk_group=1" in line for line in lines), proc.stderr
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())
