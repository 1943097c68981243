"""Toy DeepSeek configs and the folder fix-ups the tests share.

transformers initialises ``e_score_correction_bias`` (a buffer) to zeros; ``with_expert_bias`` gives it
random values (same seed on every rank: the folder is written once), so that routing depends on it.
``fused_copy`` re-saves a folder with stacked experts (``save_pretrained(save_original_format=False)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

YARN = {
    "rope_type": "yarn",
    "factor": 4.0,
    "original_max_position_embeddings": 128,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "rope_theta": 10000.0,
}

# DeepSeek-V3 in small: q-LoRA, YaRN, 1 dense + 2 MoE layers, 8 experts in 4 groups, top-4 from 2 groups
V3_TOY: dict[str, Any] = {
    "model_type": "deepseek_v3",
    "hidden_size": 64,
    "intermediate_size": 96,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 3,
    "first_k_dense_replace": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "num_local_experts": 8,
    "num_experts_per_tok": 4,
    "n_group": 4,
    "topk_group": 2,
    "n_shared_experts": 1,
    "routed_scaling_factor": 2.5,
    "norm_topk_prob": True,
    "q_lora_rank": 48,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
    "num_nextn_predict_layers": 0,
    "rope_parameters": YARN,
}

# DeepSeek-V2-Lite in small: plain q projection, softmax top-k without renormalisation, one group, no YaRN
V2_TOY: dict[str, Any] = {
    "model_type": "deepseek_v2",
    "hidden_size": 64,
    "intermediate_size": 96,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 2,
    "first_k_dense_replace": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "num_experts": 8,
    "num_experts_per_tok": 3,
    "n_group": 1,
    "topk_group": 1,
    "topk_method": "greedy",
    "n_shared_experts": 2,
    "routed_scaling_factor": 1.0,
    "norm_topk_prob": False,
    "q_lora_rank": None,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
}

_DONE: dict[tuple[Path, bool], Path] = {}


def with_expert_bias(folder: Path, mktemp, *, fused: bool = False, seed: int = 3) -> Path:
    """A copy of ``folder`` with random ``e_score_correction_bias`` (N(0, 0.1)), optionally with stacked experts."""
    key = (folder, fused)
    if key in _DONE:
        return _DONE[key]
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.1)
    out = mktemp("biased") / "hf"
    model.save_pretrained(out, save_original_format=not fused)
    _DONE[key] = out
    return out
