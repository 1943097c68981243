"""Entry point of bridge-qwen: declares the contract and registers strings only (no torch)."""

from bridge_core import hookimpl

BRIDGE_CONTRACT = ">=1.1,<2"


@hookimpl
def register_bridges(register):
    register(architecture="Qwen2ForCausalLM", bridge="bridge_qwen.qwen2:Qwen2Bridge", model_type="qwen2")
    register(architecture="Qwen3ForCausalLM", bridge="bridge_qwen.qwen3:Qwen3Bridge", model_type="qwen3")
    register(architecture="Qwen2MoeForCausalLM", bridge="bridge_qwen.qwen2_moe:Qwen2MoeBridge", model_type="qwen2_moe")
    register(architecture="Qwen3MoeForCausalLM", bridge="bridge_qwen.qwen3_moe:Qwen3MoeBridge", model_type="qwen3_moe")


# Recipes in bridge_qwen.recipes (imported only when one is used); the kind is the name's suffix.
_DENSE = ("qwen25_500m", "qwen25_1p5b", "qwen25_3b", "qwen25_7b", "qwen25_14b", "qwen25_32b", "qwen25_72b")
_DENSE += ("qwen3_600m", "qwen3_1p7b", "qwen3_4b", "qwen3_8b", "qwen3_14b", "qwen3_32b")
_MOE = ("qwen15_moe_a2p7b", "qwen2_57b_a14b", "qwen3_30b_a3b", "qwen3_235b_a22b")
RECIPES = tuple(f"{model}_{kind}" for kind in ("pretrain", "sft", "peft") for model in _DENSE + _MOE)


@hookimpl
def register_recipes(register):
    for name in RECIPES:
        register(name=name, recipe=f"bridge_qwen.recipes:{name}", family="qwen", kind=name.rsplit("_", 1)[1])
