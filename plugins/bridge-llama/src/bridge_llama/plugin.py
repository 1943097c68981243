"""Entry point of bridge-llama: declares the contract and registers strings only (no torch)."""

from bridge_core import hookimpl

BRIDGE_CONTRACT = ">=1.1,<2"


@hookimpl
def register_bridges(register):
    register(architecture="LlamaForCausalLM", bridge="bridge_llama.bridge:LlamaBridge", model_type="llama")
    register(architecture="MistralForCausalLM", bridge="bridge_llama.bridge:MistralBridge", model_type="mistral")


# Recipes in bridge_llama.recipes (imported only when one is used); the kind is the name's suffix.
RECIPES = (
    "llama32_1b_pretrain",
    "llama32_3b_pretrain",
    "llama31_8b_pretrain",
    "llama31_70b_pretrain",
    "smollm2_135m_pretrain",
    "smollm2_360m_pretrain",
    "smollm2_1p7b_pretrain",
    "mistral_7b_pretrain",
    "llama32_1b_sft",
    "llama32_3b_sft",
    "llama31_8b_sft",
    "llama31_70b_sft",
    "smollm2_135m_sft",
    "smollm2_360m_sft",
    "smollm2_1p7b_sft",
    "mistral_7b_sft",
    "llama32_1b_peft",
    "llama32_3b_peft",
    "llama31_8b_peft",
    "llama31_70b_peft",
    "smollm2_135m_peft",
    "smollm2_360m_peft",
    "smollm2_1p7b_peft",
    "mistral_7b_peft",
)


@hookimpl
def register_recipes(register):
    for name in RECIPES:
        register(name=name, recipe=f"bridge_llama.recipes:{name}", family="llama", kind=name.rsplit("_", 1)[1])
