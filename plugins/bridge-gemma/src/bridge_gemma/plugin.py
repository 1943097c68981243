"""Entry point of bridge-gemma: declares the contract and registers strings only.

bridge-core imports this module during discovery, in every process, before any model is used:
keep it tiny and never import torch, megatron or transformers here (the conformance tests check).
"""

from bridge_core import hookimpl

BRIDGE_CONTRACT = ">=1.1,<2"


@hookimpl
def register_bridges(register):
    register(architecture="GemmaForCausalLM", bridge="bridge_gemma.bridge:GemmaBridge", model_type="gemma")
    register(architecture="Gemma2ForCausalLM", bridge="bridge_gemma.bridge:Gemma2Bridge", model_type="gemma2")
    register(architecture="Gemma3ForCausalLM", bridge="bridge_gemma.bridge:Gemma3Bridge", model_type="gemma3_text")


# Recipes in bridge_gemma.recipes (imported only when one is used); the kind is the name's suffix.
_MODELS = ("gemma_2b", "gemma_7b", "gemma2_2b", "gemma2_9b", "gemma2_27b")
_MODELS += ("gemma3_1b", "gemma3_4b", "gemma3_12b", "gemma3_27b")
RECIPES = tuple(f"{model}_{kind}" for kind in ("pretrain", "sft", "peft") for model in _MODELS)


@hookimpl
def register_recipes(register):
    for name in RECIPES:
        register(name=name, recipe=f"bridge_gemma.recipes:{name}", family="gemma", kind=name.rsplit("_", 1)[1])
