"""An in-process test plugin for core's engine tests (core tests cannot rely on installed plugins).

It serves Llama-shaped checkpoints with the stock ``DecoderBridge``, and a Qwen3-MoE-shaped
checkpoint whose experts are *stacked* on disk (``experts.gate_up_proj`` [E, 2I, H],
``experts.down_proj`` [E, H, I]) with the fused expert mappings.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, ClassVar

from bridge_core import hookimpl
from bridge_core.mappings import FusedExpertMapping, FusedGatedExpertMapping, ReplicatedMapping
from bridge_core.model.decoder import DecoderBridge

BRIDGE_CONTRACT = ">=1.0,<2"


@hookimpl
def register_bridges(register):
    register(architecture="LlamaForCausalLM", bridge="_test_bridges:DecoderBridge", model_type="llama")
    register(architecture="Qwen3MoeForCausalLM", bridge="_test_bridges:StackedExpertBridge", model_type="qwen3_moe")


class StackedExpertBridge(DecoderBridge):
    """All layers sparse, top-k renormalised, experts stacked in one HF tensor per projection."""

    CONFIG_MAPPING: ClassVar[list[tuple[str, str]]] = [
        *DecoderBridge.CONFIG_MAPPING,
        ("num_experts", "num_moe_experts"),
        ("num_experts_per_tok", "moe_router_topk"),
        ("moe_intermediate_size", "moe_ffn_hidden_size"),
    ]
    HANDLED_HF_CONFIG = DecoderBridge.HANDLED_HF_CONFIG | {"num_local_experts", "norm_topk_prob"}
    SUPPORTED_HF_CONFIG: ClassVar[dict[str, Any]] = {
        **DecoderBridge.SUPPORTED_HF_CONFIG,
        "mlp_only_layers": [],
        "decoder_sparse_step": 1,
        "norm_topk_prob": True,
    }
    PROVIDER_DEFAULTS: ClassVar[dict[str, Any]] = {
        **DecoderBridge.PROVIDER_DEFAULTS,
        "qk_layernorm": True,
        "moe_router_pre_softmax": False,
        "moe_router_dtype": "fp32",
        "moe_router_load_balancing_type": "none",
    }

    def mlp_mappings(self):
        p = "model.layers.*."
        return [
            *super().mlp_mappings(),
            ReplicatedMapping("decoder.layers.*.self_attention.q_layernorm.weight", f"{p}self_attn.q_norm.weight"),
            ReplicatedMapping("decoder.layers.*.self_attention.k_layernorm.weight", f"{p}self_attn.k_norm.weight"),
            ReplicatedMapping("decoder.layers.*.mlp.router.weight", f"{p}mlp.gate.weight"),
            FusedGatedExpertMapping(
                "decoder.layers.*.mlp.experts.local_experts.*.linear_fc1.weight", f"{p}mlp.experts.gate_up_proj"
            ),
            FusedExpertMapping(
                "decoder.layers.*.mlp.experts.local_experts.*.linear_fc2.weight", f"{p}mlp.experts.down_proj", tp_dim=1
            ),
        ]


def stack_experts(src: Path, dst: Path, experts: int) -> Path:
    """A copy of the per-expert HF folder ``src`` with experts stacked per projection ([E, 2I, H], [E, H, I])."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, dirs_exist_ok=True)
    t = load_file(dst / "model.safetensors")
    for layer in sorted({int(k.split(".")[2]) for k in t if ".mlp.experts." in k}):
        p = f"model.layers.{layer}.mlp.experts."
        gate_up = [torch.cat([t.pop(f"{p}{e}.{n}_proj.weight") for n in ("gate", "up")]) for e in range(experts)]
        t[p + "gate_up_proj"] = torch.stack(gate_up)
        t[p + "down_proj"] = torch.stack([t.pop(f"{p}{e}.down_proj.weight") for e in range(experts)])
    save_file(t, dst / "model.safetensors")
    return dst
