"""Qwen2-MoE's special features, each shown to matter, its refusals, the CLI and greedy generation.

Ablations flip one feature of an otherwise exact conversion (the shared expert's sigmoid gate, the
routing normalisation) and check that transformers' logits are then missed by far.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from _qwen2_moe_layouts import fused_copy
from test_qwen2_moe_conformance import TOY

from bridge_core import AutoBridge
from bridge_core.errors import ConfigError
from bridge_core.runtime.inference import forward_logits
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.compare import compare_hf_weights, max_abs_diff
from bridge_core.testing.launch import run_bridgectl
from bridge_core.testing.toy import ToyModel, hf_logits, sample_ids

RENORM = {**TOY, "norm_topk_prob": True}
GATES = [f"model.layers.{i}.mlp.shared_expert_gate.weight" for i in range(TOY["num_hidden_layers"])]


@pytest.fixture(scope="module")
def softmax(toy_model_factory) -> Path:
    return toy_model_factory(ToyModel("Qwen2MoeForCausalLM", TOY))


@pytest.fixture(scope="module")
def renorm(toy_model_factory) -> Path:
    return toy_model_factory(ToyModel("Qwen2MoeForCausalLM", RENORM))


def max_diff(folder: Path, allow_unmapped=(), **settings) -> float:
    """max |Megatron - transformers| logits of ``folder`` at TP=1 with provider ``settings`` overridden."""
    bridge = AutoBridge.from_hf_pretrained(folder)
    provider = bridge.to_megatron_provider()
    for key, value in settings.items():
        setattr(provider, key, value)
    provider.finalize()
    ids = sample_ids(1000, seq=32)
    try:
        model = provider.provide_distributed_model(wrap_with_ddp=False)
        bridge.load_hf_weights(model, allow_unmapped=allow_unmapped)
        logits = forward_logits(model, ids, vocab_size=1000)
    finally:
        destroy_model_parallel()
    return max_abs_diff(logits, hf_logits(folder, ids))


def test_shared_expert_gate_matters(softmax):
    assert max_diff(softmax) <= 1e-4
    ungated = max_diff(softmax, allow_unmapped=GATES, moe_shared_expert_gate=False)
    assert ungated > 1e-2, f"dropping the shared expert's sigmoid gate moves logits by only {ungated:.2g}"


@pytest.mark.parametrize("toy", ["softmax", "renorm"])
def test_routing_normalisation_matters(request, toy):
    folder = request.getfixturevalue(toy)
    exact = AutoBridge.from_hf_pretrained(folder).to_megatron_provider().moe_router_pre_softmax
    assert exact == (toy == "softmax")  # norm_topk_prob=False: softmax over all experts, then top-k
    assert max_diff(folder) <= 1e-4
    flipped = max_diff(folder, moe_router_pre_softmax=not exact)
    assert flipped > 1e-2, f"the other routing normalisation moves logits by only {flipped:.2g}"


def test_qkv_bias_and_shared_expert_settings_translate(softmax):
    provider = AutoBridge.from_hf_pretrained(softmax).to_megatron_provider()
    assert provider.add_qkv_bias and provider.moe_shared_expert_gate
    assert (provider.moe_shared_expert_intermediate_size, provider.moe_ffn_hidden_size) == (48, 32)
    assert (provider.ffn_hidden_size, provider.moe_layer_freq, provider.moe_aux_loss_coeff) == (96, [1, 1], 0.01)


@pytest.mark.parametrize(
    "changes,fragment",
    [
        ({"decoder_sparse_step": 0}, "decoder_sparse_step=0"),
        ({"mlp_only_layers": [0, 2]}, "mlp_only_layers=[0, 2] names layers outside 0..1: [2]"),
        ({"mlp_only_layers": [0, 1]}, "leave no sparse layer"),
        ({"decoder_sparse_step": 3}, "leave no sparse layer"),
        ({"num_experts": 0}, "num_experts=0"),
        ({"use_sliding_window": True, "sliding_window": 64}, "use_sliding_window=True"),
    ],
)
def test_settings_megatron_core_cannot_express_are_refused(softmax, tmp_path, changes, fragment):
    config = json.loads((softmax / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **changes}))
    with pytest.raises(ConfigError) as err:
        AutoBridge.from_hf_pretrained(tmp_path).to_megatron_provider()
    assert fragment in str(err.value)


def bridgectl(*args: str) -> subprocess.CompletedProcess:
    return run_bridgectl(*args, plugins="qwen")


def test_cli_roundtrip_of_a_stacked_expert_checkpoint_at_ep2(renorm, tmp_path_factory, tmp_path):
    source = fused_copy(renorm, tmp_path_factory.mktemp)
    megatron, hf = tmp_path / "megatron", tmp_path / "hf"
    proc = bridgectl("import", "--hf-model", str(source), "--megatron-path", str(megatron), "--ep", "2")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((megatron / "run_config.json").read_text())["provider"]["hf_expert_layout"] == "fused"
    proc = bridgectl("export", "--megatron-path", str(megatron), "--hf-path", str(hf))
    assert proc.returncode == 0, proc.stderr
    assert compare_hf_weights(source, hf) == []


def test_greedy_generation_equals_transformers(softmax):
    from transformers import AutoModelForCausalLM

    from bridge_core.runtime.generation import greedy_generate

    new = 16
    ids = torch.randint(0, 1000, (1, 10), generator=torch.Generator().manual_seed(3))
    hf = AutoModelForCausalLM.from_pretrained(softmax).eval()
    with torch.no_grad():
        expected = hf.generate(ids, do_sample=False, max_new_tokens=new)
    eos = hf.generation_config.eos_token_id
    assert expected.shape[1] == ids.shape[1] + new
    provider = AutoBridge.from_hf_pretrained(softmax).to_megatron_provider(load_weights=True)
    provider.finalize()
    try:
        model = provider.provide_distributed_model(wrap_with_ddp=False)
        assert torch.equal(greedy_generate(model, ids, new, eos_token_id=eos), expected)
        assert torch.equal(greedy_generate(model, ids, new, eos_token_id=eos, use_cache=False), expected)
    finally:
        destroy_model_parallel()


def test_generation_at_ep2_tp2_pp2_in_one_launch(softmax, tmp_path):
    from transformers import AutoModelForCausalLM

    from bridge_core.testing.launch import torchrun

    new = 16
    ids = torch.randint(0, 1000, (1, 10), generator=torch.Generator().manual_seed(3))
    hf = AutoModelForCausalLM.from_pretrained(softmax).eval()
    with torch.no_grad():
        want = hf.generate(ids, do_sample=False, max_new_tokens=new)[0].tolist()
    cases = [{"name": "ep2", "ep": 2}, {"name": "tp2-etp1", "tp": 2, "etp": 1}, {"name": "pp2", "pp": 2}]
    spec = {
        "hf_path": str(softmax),
        "ids": ids[0].tolist(),
        "max_new_tokens": new,
        "eos_token_id": hf.generation_config.eos_token_id,
        "out": str(tmp_path / "results.json"),
        "cases": cases,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    script = Path(__file__).parent / "_qwen2_moe_generation_dist.py"
    env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "BRIDGE_PLUGINS": "qwen"}
    proc = torchrun([str(script), str(tmp_path / "spec.json")], 2, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for case in cases:
        assert results[case["name"]] == [want, want], case["name"]  # every rank holds transformers' tokens


@pytest.mark.parametrize(
    "shape",
    [
        # Qwen1.5-MoE-A2.7B (a transformers 4 config: no qkv_bias key, biases implied)
        dict(hidden_size=2048, num_attention_heads=16, num_key_value_heads=16, num_hidden_layers=24,
             intermediate_size=5632, moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
             num_experts=60, num_experts_per_tok=4, max_position_embeddings=8192, max_window_layers=21),
        # Qwen2-57B-A14B
        dict(hidden_size=3584, num_attention_heads=28, num_key_value_heads=4, num_hidden_layers=28,
             intermediate_size=18944, moe_intermediate_size=2560, shared_expert_intermediate_size=20480,
             num_experts=64, num_experts_per_tok=8, max_position_embeddings=32768, max_window_layers=28),
    ],
)  # fmt: skip
def test_published_configs_translate_both_ways(shape):
    """The released models' config.json values (no weights): every key survives HF -> provider -> HF."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(
        "qwen2_moe",
        architectures=["Qwen2MoeForCausalLM"],
        **shape,
        norm_topk_prob=False,
        vocab_size=151936,
        rope_theta=1e6,
        sliding_window=32768,
        use_sliding_window=False,
        rms_norm_eps=1e-6,
        router_aux_loss_coef=0.001,
        dtype="bfloat16",
    )
    bridge = AutoBridge.from_hf_config(config)
    provider = bridge.to_megatron_provider()
    assert provider.add_qkv_bias and provider.moe_shared_expert_gate and provider.moe_router_pre_softmax
    assert provider.moe_layer_freq == [1] * shape["num_hidden_layers"]
    assert provider.moe_shared_expert_intermediate_size == shape["shared_expert_intermediate_size"]
    source, regenerated = config.to_dict(), bridge.hf_config_for_export(provider).to_dict()
    assert {k: (v, regenerated.get(k)) for k, v in source.items() if regenerated.get(k) != v} == {}
