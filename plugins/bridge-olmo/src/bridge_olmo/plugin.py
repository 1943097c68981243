"""Entry point of bridge-olmo: declares the contract and registers strings only.

bridge-core imports this module during discovery, in every process, before any model is used:
keep it tiny and never import torch, megatron or transformers here (the conformance tests check).
"""

from bridge_core import hookimpl

BRIDGE_CONTRACT = ">=1.1,<2"


@hookimpl
def register_bridges(register):
    register(architecture="Olmo2ForCausalLM", bridge="bridge_olmo.olmo2:Olmo2Bridge", model_type="olmo2")
    register(architecture="OlmoeForCausalLM", bridge="bridge_olmo.olmoe:OlmoeBridge", model_type="olmoe")


# Recipes in bridge_olmo.recipes (imported only when one is used); the kind is the name's suffix.
RECIPES = tuple(
    f"{m}_{kind}" for kind in ("pretrain", "sft", "peft") for m in ("olmo2_1b", "olmo2_7b", "olmo2_13b", "olmoe_7b")
)


@hookimpl
def register_recipes(register):
    for name in RECIPES:
        register(name=name, recipe=f"bridge_olmo.recipes:{name}", family="olmo", kind=name.rsplit("_", 1)[1])
