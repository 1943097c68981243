"""LoRA and DoRA on Qwen2 (q/k/v biases), Qwen3 (per-head q/k norms, head_dim x heads != hidden) and Qwen3-MoE
(attention adapters only: experts are not targets): the exported adapter in ``peft`` and the merged model give the
Megatron model's logits within 1e-4."""

from __future__ import annotations

import peft  # noqa: F401  (tox installs it: a missing peft must fail, not skip)
import pytest

pytest.importorskip("megatron.core.datasets.helpers_cpp")

from bridge_core.testing.peft import check_peft
from bridge_core.testing.toy import ToyModel, build_toy

BASE = {
    "hidden_size": 96,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 160,
    "vocab_size": 256,
    "max_position_embeddings": 128,
}
CASES = {
    "qwen2": ("qwen25_7b_peft", ToyModel("Qwen2ForCausalLM", {"model_type": "qwen2", **BASE})),
    "qwen3": ("qwen3_8b_peft", ToyModel("Qwen3ForCausalLM", {"model_type": "qwen3", **BASE, "head_dim": 24})),
    "qwen3moe": (
        "qwen3_30b_a3b_peft",
        ToyModel(
            "Qwen3MoeForCausalLM",
            {
                **BASE,
                "model_type": "qwen3_moe",
                "head_dim": 24,
                "num_experts": 4,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": 48,
            },
        ),
    ),
}


@pytest.mark.parametrize("scheme", ["lora", "dora"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_exported_and_merged_adapters_equal_the_megatron_model(case, scheme, tmp_path):
    recipe, toy = CASES[case]
    hf = build_toy(toy, tmp_path / "hf")
    diffs = check_peft(recipe, hf, tmp_path, scheme)
    print(f"{case} {scheme}: {diffs}")
    assert diffs["peft"] < 1e-4 and diffs["merged"] < 1e-4, diffs
    assert diffs["base"] > 1e-3, diffs
