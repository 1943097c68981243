"""The conformance kit's logit check catches a swapped q_norm/k_norm mapping on a bf16 Qwen3 toy."""

from __future__ import annotations

import pytest

from bridge_core.testing.conformance import assert_logits_match
from bridge_core.testing.toy import ToyModel, build_toy, sample_ids

qwen3 = pytest.importorskip("bridge_qwen.qwen3")

QWEN3_BF16 = ToyModel(
    "Qwen3ForCausalLM",
    {
        "model_type": "qwen3",
        "hidden_size": 96,
        "num_attention_heads": 6,
        "num_key_value_heads": 2,
        "head_dim": 24,
        "num_hidden_layers": 2,
        "intermediate_size": 160,
        "vocab_size": 1000,
        "max_position_embeddings": 512,
    },
    dtype="bfloat16",
)


def _bf16_logits(folder, ids):
    from bridge_core import AutoBridge
    from bridge_core.runtime.inference import forward_logits
    from bridge_core.runtime.parallel import destroy_model_parallel

    bridge = AutoBridge.from_hf_pretrained(folder)  # the checkpoint's dtype: bf16, as the parallel runs
    model = bridge.to_megatron_provider(load_weights=True).provide_distributed_model(wrap_with_ddp=False)
    try:
        return forward_logits(model, ids, vocab_size=1000)
    finally:
        destroy_model_parallel()


def test_bf16_logits_pass_and_a_swapped_qk_norm_mapping_fails(tmp_path, monkeypatch):
    folder = build_toy(QWEN3_BF16, tmp_path / "qwen3-bf16")
    ids = sample_ids(1000, seq=32)
    assert_logits_match(_bf16_logits(folder, ids), folder, ids, "bfloat16")  # measured 0.052

    right = qwen3.qk_norm_mappings

    def swapped():
        q, k = right()
        return [type(q)(q.megatron_param, k.hf_param), type(k)(k.megatron_param, q.hf_param)]

    monkeypatch.setattr(qwen3, "qk_norm_mappings", swapped)
    with pytest.raises(AssertionError, match=r"max \|logits diff\| .* > 0.15 \(bfloat16 model\)"):
        assert_logits_match(_bf16_logits(folder, ids), folder, ids, "bfloat16")  # measured 0.45
