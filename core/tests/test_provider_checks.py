"""GPTModelProvider.finalize(): parallel-size refusals, vocabulary padding and CPU settings (nothing is built)."""

from __future__ import annotations

import pytest
import torch

from bridge_core.errors import ConfigError
from bridge_core.model import provider as provider_module
from bridge_core.model.provider import GPTModelProvider


def make(**overrides) -> GPTModelProvider:
    settings = dict(num_layers=4, hidden_size=64, num_attention_heads=4, vocab_size=1000)
    settings.update(overrides)
    return GPTModelProvider(**settings)


def test_valid_settings_finalize():
    p = make(num_query_groups=2, tensor_model_parallel_size=2)
    assert p.finalize() is p and p._finalized


def test_tp_not_dividing_heads_lists_valid_sizes():
    p = make(hidden_size=72, num_attention_heads=9, num_query_groups=3, tensor_model_parallel_size=2)
    with pytest.raises(ConfigError) as err:
        p.finalize()
    msg = str(err.value)
    assert "tensor parallel size 2 does not divide num_attention_heads=9" in msg
    assert msg.endswith("valid sizes: 1, 3")


def test_tp_not_dividing_kv_groups_names_them():
    with pytest.raises(ConfigError, match=r"num_query_groups \(KV heads\)=2 .*valid sizes: 1, 2$"):
        make(num_attention_heads=8, num_query_groups=2, tensor_model_parallel_size=4).finalize()


def test_ep_not_dividing_experts_lists_valid_sizes():
    p = make(num_moe_experts=6, moe_router_topk=2, ffn_hidden_size=64, expert_model_parallel_size=4)
    with pytest.raises(ConfigError, match=r"expert parallel size 4 does not divide num_moe_experts=6 .*1, 2, 3, 6$"):
        p.finalize()


def test_pp_not_dividing_layers_is_refused():
    with pytest.raises(ConfigError, match=r"pipeline parallel size 3 \(x virtual 1\) does not divide num_layers=4"):
        make(pipeline_model_parallel_size=3).finalize()


def test_virtual_pipeline_stages_count_against_layers():
    with pytest.raises(ConfigError, match=r"pipeline parallel size 2 \(x virtual 3\) does not divide num_layers=4"):
        make(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=3).finalize()


def test_missing_vocab_size_is_refused():
    with pytest.raises(ConfigError, match="vocab_size is not set"):
        make(vocab_size=None).finalize()


def test_padded_vocab_not_divisible_by_tp_is_refused():
    with pytest.raises(ConfigError, match="padded_vocab_size=1001 is not divisible by tensor parallel size 2"):
        make(padded_vocab_size=1001, tensor_model_parallel_size=2).finalize()


@pytest.mark.parametrize(
    "vocab,tp,heads,padded",
    [(1000, 1, 4, 1024), (1000, 2, 4, 1024), (1025, 2, 4, 1280), (49152, 3, 6, 49152), (128, 1, 4, 128)],
)
def test_vocab_size_with_padding(vocab, tp, heads, padded):
    assert make(vocab_size=vocab, num_attention_heads=heads, tensor_model_parallel_size=tp).vocab_size_with_padding == (
        padded
    )


def test_explicit_padded_vocab_size_wins():
    assert make(vocab_size=1000, padded_vocab_size=1008).vocab_size_with_padding == 1008


def test_finalize_without_cuda_uses_cpu_init_and_turns_cuda_fusions_off(monkeypatch):
    monkeypatch.setattr(provider_module, "cuda_available", lambda: False)
    p = make(masked_softmax_fusion=True, bias_activation_fusion=True, bias_dropout_fusion=True, apply_rope_fusion=True)
    p.finalize()
    assert p.use_cpu_initialization
    assert not any(
        (
            p.masked_softmax_fusion,
            p.gradient_accumulation_fusion,
            p.persist_layer_norm,
            p.bias_activation_fusion,
            p.bias_dropout_fusion,
            p.apply_rope_fusion,
        )
    )


def test_sequence_parallel_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(provider_module, "cuda_available", lambda: False)
    with pytest.raises(ConfigError, match="sequence_parallel=True needs CUDA"):
        make(sequence_parallel=True, tensor_model_parallel_size=2).finalize()


def test_bf16_params_set_the_bf16_flag():
    p = make(params_dtype=torch.bfloat16, pipeline_model_parallel_size=2).finalize()
    assert p.bf16 and not p.fp16 and p.pipeline_dtype == torch.bfloat16


def test_megatron_validation_errors_become_config_errors():
    with pytest.raises(ConfigError, match="invalid model settings: num_moe_experts must be non None"):
        make(expert_model_parallel_size=2).finalize()


def test_heads_not_a_multiple_of_kv_groups_is_refused():
    with pytest.raises(ConfigError, match=r"num_attention_heads=4 is not a multiple of num_query_groups=3"):
        make(num_attention_heads=4, num_query_groups=3).finalize()


def test_a_meta_model_stays_on_meta_where_a_gpu_is_visible(monkeypatch):
    """A plan builds the model on the meta device; moving it to the GPU failed ('Cannot copy out of
    meta tensor', found on the H200). The move is faked: this machine may have no CUDA."""
    from bridge_core.runtime.parallel import destroy_model_parallel

    monkeypatch.setattr(provider_module, "cuda_available", lambda: True)
    p = make(num_layers=2, num_query_groups=2, ffn_hidden_size=128, perform_initialization=False)
    try:
        with torch.device("meta"):
            (chunk,) = p.provide_distributed_model(wrap_with_ddp=False)
    finally:
        destroy_model_parallel()
    assert any(param.is_meta for param in chunk.parameters())  # (CPU initialisation puts some on the CPU)
