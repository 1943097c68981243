"""The FLOPs calculator against hand-computed values of published shapes, and plugin blocks.

The arithmetic below is written from the models' config.json numbers with Megatron-LM's convention
(matmuls only, 2 FLOPs per multiply-add, causal attention over seq/2 keys), not from the calculator.
"""

from __future__ import annotations

import dataclasses
import sys
import types

import pytest

pytest.importorskip("megatron.core")

from bridge_core import hookimpl
from bridge_core.errors import PluginError
from bridge_core.model.provider import GPTModelProvider
from bridge_core.plugins.registry import Registry
from bridge_core.training import flops

SEQ = 4096


def provider(**kwargs) -> GPTModelProvider:
    return GPTModelProvider(**kwargs).finalize()


def llama3_8b(**extra) -> GPTModelProvider:
    # meta-llama/Meta-Llama-3-8B config.json
    return provider(
        num_layers=32,
        hidden_size=4096,
        ffn_hidden_size=14336,
        num_attention_heads=32,
        num_query_groups=8,
        kv_channels=128,
        vocab_size=128256,
        gated_linear_unit=True,
        normalization="RMSNorm",
        **extra,
    )


def qwen3_30b_a3b() -> GPTModelProvider:
    # Qwen/Qwen3-30B-A3B config.json: 128 experts, 8 per token, no shared expert, every layer sparse
    return provider(
        num_layers=48,
        hidden_size=2048,
        ffn_hidden_size=6144,
        num_attention_heads=32,
        num_query_groups=4,
        kv_channels=128,
        vocab_size=151936,
        gated_linear_unit=True,
        normalization="RMSNorm",
        qk_layernorm=True,
        num_moe_experts=128,
        moe_router_topk=8,
        moe_ffn_hidden_size=768,
    )


def test_llama3_8b_forward_and_training_flops_per_token():
    h, layers, ffn, heads, groups, d, vocab = 4096, 32, 14336, 32, 8, 128, 128256
    qkv = 2 * h * (heads + 2 * groups) * d
    out = 2 * heads * d * h
    mlp = 2 * 3 * h * ffn  # gate, up, down
    scores = 2 * 2 * heads * d * (SEQ / 2)  # QK^T and PV over half the causal square
    logits = 2 * h * vocab  # 128256 is already a multiple of 128
    forward = layers * (qkv + out + mlp + scores) + logits
    assert forward == 16_083_058_688
    p = llama3_8b()
    assert flops.forward_flops_per_token(p, SEQ) == forward
    assert flops.training_flops_per_token(p, SEQ) == 3 * forward
    # PEFT: frozen weights take no weight gradient (2x) but the attention products still take both (3x)
    assert flops.training_flops_per_token(p, SEQ, frozen_weights=True) == 2 * forward + layers * scores
    # the attention term grows with the sequence: doubling it adds the same score cost again
    assert flops.forward_flops_per_token(p, 2 * SEQ) - forward == layers * scores


def test_qwen3_30b_a3b_counts_router_and_the_top_k_experts_only():
    h, layers, heads, groups, d, vocab = 2048, 48, 32, 4, 128, 151936
    experts, topk, expert_ffn = 128, 8, 768
    qkv = 2 * h * (heads + 2 * groups) * d
    out = 2 * heads * d * h  # heads x head_dim = 4096 != hidden 2048
    router = 2 * h * experts
    routed = topk * 2 * 3 * h * expert_ffn
    scores = 2 * 2 * heads * d * (SEQ / 2)
    logits = 2 * h * vocab  # 151936 = 1187 x 128
    forward = layers * (qkv + out + router + routed + scores) + logits
    assert forward == 7_693_926_400
    p = qwen3_30b_a3b()
    assert flops.forward_flops_per_token(p, SEQ) == forward
    assert flops.training_flops_per_token(p, SEQ) == 3 * forward
    # PEFT: frozen weights take no weight gradient (2x) but the attention products still take both (3x)
    assert flops.training_flops_per_token(p, SEQ, frozen_weights=True) == 2 * forward + layers * scores


def test_shared_experts_dense_layers_and_ungated_mlp():
    p = qwen3_30b_a3b()
    h = 2048
    base = flops.forward_flops_per_token(p, SEQ)
    shared = dataclasses.replace(p, moe_shared_expert_intermediate_size=5632, moe_shared_expert_gate=True)
    assert flops.forward_flops_per_token(shared, SEQ) - base == 48 * (2 * 3 * h * 5632 + 2 * h)
    # moe_layer_freq=2: layers 1, 3, 5, ... sparse; the others a dense MLP of ffn_hidden_size
    half = dataclasses.replace(p, moe_layer_freq=2)
    moe_part = 2 * h * 128 + 8 * 2 * 3 * h * 768
    assert flops.forward_flops_per_token(half, SEQ) - base == 24 * (2 * 3 * h * 6144 - moe_part)
    small = provider(num_layers=2, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4, vocab_size=256)
    assert flops.mlp_flops(small, 256) == 2 * 2 * 64 * 256  # ungated: up and down only


def test_a_sliding_window_shortens_the_attended_keys():
    window = 1024
    every = llama3_8b()
    windowed = dataclasses.replace(every, window_size=(window, 0), window_attn_skip_freq=2)  # layers 2, 4, ... full
    full_keys, window_keys = SEQ / 2, window - window**2 / (2 * SEQ)
    per_key = 2 * 2 * 32 * 128
    saved = 16 * per_key * (full_keys - window_keys)
    assert flops.forward_flops_per_token(every, SEQ) - flops.forward_flops_per_token(windowed, SEQ) == saved


def test_recompute_adds_what_runs_again():
    plain = llama3_8b()
    forward = flops.forward_flops_per_token(plain, SEQ)
    logits = 2 * 4096 * 128256
    full = llama3_8b(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    assert flops.training_flops_per_token(full, SEQ) == 4 * forward - logits  # every layer again, not the logits
    block = llama3_8b(recompute_granularity="full", recompute_method="block", recompute_num_layers=8)
    assert flops.training_flops_per_token(block, SEQ) == 3 * forward + (forward - logits) / 4
    selective = llama3_8b(recompute_granularity="selective")  # core_attn by default
    assert flops.training_flops_per_token(selective, SEQ) == 3 * forward + 32 * 2 * 2 * 32 * 128 * SEQ / 2


def test_an_uncounted_block_is_a_one_line_error():
    mla = dataclasses.replace(llama3_8b(), multi_latent_attention=True)
    with pytest.raises(flops.FlopsUnsupported, match=r"multi_latent_attention .* \(FLOPS_DECODER_LAYER\)"):
        flops.forward_flops_per_token(mla, SEQ)


def test_an_mtp_layer_adds_eh_proj_a_last_kind_layer_and_its_logits():
    plain = llama3_8b()
    mtp = dataclasses.replace(plain, mtp_num_layers=1)
    layer = flops.standard_layer_flops(plain) + 2 * 2 * 32 * 128 * SEQ / 2
    extra = 2 * 2 * 4096 * 4096 + layer + 2 * 4096 * 128256
    assert flops.forward_flops_per_token(mtp, SEQ) == flops.forward_flops_per_token(plain, SEQ) + extra


# -- plugin blocks ------------------------------------------------------------------------------


def toy_layer_flops(p) -> float:
    """A made-up block: twice the standard layer's projections and MLP."""
    return 2.0 * flops.standard_layer_flops(p)


def _registry() -> Registry:
    plugin = types.ModuleType("flops_test_plugin")
    plugin.BRIDGE_CONTRACT = ">=1.0,<2"

    @hookimpl
    def register_flops(register):
        register(block="toy_decoder_layer", function=f"{__name__}:toy_layer_flops")

    plugin.register_flops = register_flops
    registry = Registry()
    registry.add_plugin(plugin, name="flops-test", strict=True)
    return registry


class NamesTheToyBlock:
    FLOPS_DECODER_LAYER = "toy_decoder_layer"


class NamesNothing:
    FLOPS_DECODER_LAYER = None


def test_a_registered_block_named_by_the_bridge_changes_the_total():
    assert __name__ in sys.modules
    registry, p = _registry(), llama3_8b()
    standard = flops.model_training_flops_per_token(p, SEQ, NamesNothing(), registry)
    assert standard == flops.training_flops_per_token(p, SEQ)
    with_block = flops.model_training_flops_per_token(p, SEQ, NamesTheToyBlock(), registry)
    layer = 2 * 4096 * (32 + 16) * 128 + 2 * 4096 * 4096 + 2 * 3 * 4096 * 14336
    assert with_block - standard == 3 * 32 * layer  # each layer's own count doubled; scores and logits kept


def test_a_bridge_naming_an_unregistered_block_is_refused():
    class Typo:
        FLOPS_DECODER_LAYER = "toy_decoder_layr"

    with pytest.raises(PluginError, match="'toy_decoder_layr', which no installed plugin registers"):
        flops.model_training_flops_per_token(llama3_8b(), SEQ, Typo(), _registry())


def test_the_count_reproduces_the_fact_sheets_h200_figure():
    """TRAINING.md (measured on one H200): Llama-3-8B layers x8, seq 4096, 28,122 tok/s/GPU -> 406 TFLOP/s."""
    eight = dataclasses.replace(llama3_8b(), num_layers=8)
    assert flops.training_flops_per_token(eight, SEQ) * 28_122 / 1e12 == pytest.approx(406, abs=0.5)


def test_the_progress_line_shows_tflops_per_gpu():
    from bridge_core.training.metrics import progress_line

    record = {"step": 3, "loss": 5.0, "lr": 1e-4, "grad_norm": 1.0, "tokens_per_s": 28122.0, "tflops_per_gpu": 406.2}
    assert progress_line(record, 10, 3.0, 3).endswith("| 28,122 tok/s | 406.2 TFLOP/s/GPU | ETA 7s")
    assert "TFLOP/s" not in progress_line({**record, "tflops_per_gpu": None}, 10, 3.0, 3)


def test_the_count_reproduces_the_fact_sheets_lora_figure():
    """TRAINING.md (one H200): full Llama-3-8B, LoRA r16, seq 2048, 10,146 tok/s/GPU -> 321 TFLOP/s."""
    frozen = flops.training_flops_per_token(llama3_8b(), 2048, frozen_weights=True)
    assert frozen * 10_146 / 1e12 == pytest.approx(321, abs=1.5)
