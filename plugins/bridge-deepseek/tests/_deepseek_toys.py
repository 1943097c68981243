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


def with_mtp(folder: Path, out: Path, layers: int = 1, *, head_copies: bool = False, seed: int = 5) -> Path:
    """``folder`` (a V3 toy saved by transformers, which keeps no MTP weights) with ``layers`` synthesised MTP
    layers: HF layers ``L..L+layers-1`` as the released V3 holds them (``enorm``, ``hnorm``, ``eh_proj [H, 2H]``,
    ``shared_head.norm`` and a full MoE decoder layer shaped as layer ``L-1``), random; ``head_copies`` adds the
    per-MTP-layer ``embed_tokens``/``shared_head.head`` copies of the released index."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = load_file(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    n, hidden = config["num_hidden_layers"], config["hidden_size"]
    gen = torch.Generator().manual_seed(seed)
    last = f"model.layers.{n - 1}."
    for i in range(layers):
        mtp = f"model.layers.{n + i}."
        for name, tensor in list(tensors.items()):
            if name.startswith(last):
                noise = torch.randn(tensor.shape, generator=gen).to(tensor.dtype) * 0.05
                tensors[mtp + name[len(last) :]] = tensor + noise
        dtype = tensors["model.norm.weight"].dtype
        for norm in ("enorm", "hnorm", "shared_head.norm"):
            tensors[f"{mtp}{norm}.weight"] = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(dtype)
        tensors[f"{mtp}eh_proj.weight"] = (0.08 * torch.randn(hidden, 2 * hidden, generator=gen)).to(dtype)
        if head_copies:
            tensors[f"{mtp}embed_tokens.weight"] = tensors["model.embed_tokens.weight"].clone()
            tensors[f"{mtp}shared_head.head.weight"] = tensors["lm_head.weight"].clone()
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    config["num_nextn_predict_layers"] = layers
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for extra in folder.iterdir():
        if extra.name not in ("model.safetensors", "config.json", "model.safetensors.index.json"):
            (out / extra.name).write_bytes(extra.read_bytes())
    return out
