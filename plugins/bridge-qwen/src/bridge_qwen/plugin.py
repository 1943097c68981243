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
RECIPES = (
    "qwen3_600m_pretrain",
    "qwen3_1p7b_pretrain",
    "qwen3_4b_pretrain",
    "qwen3_8b_pretrain",
    "qwen3_14b_pretrain",
    "qwen3_32b_pretrain",
    "qwen3_600m_sft",
    "qwen3_8b_sft",
)


@hookimpl
def register_recipes(register):
    for name in RECIPES:
        register(name=name, recipe=f"bridge_qwen.recipes:{name}", family="qwen", kind=name.rsplit("_", 1)[1])
