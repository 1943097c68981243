"""Entry point of bridge-phi: declares the contract and registers strings only.

bridge-core imports this module during discovery, in every process, before any model is used:
keep it tiny and never import torch, megatron or transformers here (the conformance tests check).
"""

from bridge_core import hookimpl

BRIDGE_CONTRACT = ">=1.1,<2"


@hookimpl
def register_bridges(register):
    register(architecture="Phi3ForCausalLM", bridge="bridge_phi.bridge:Phi3Bridge", model_type="phi3")


@hookimpl
def register_flops(register):
    register(block="phi_decoder_layer", function="bridge_phi.flops:decoder_layer_flops")


# Recipes in bridge_phi.recipes (imported only when one is used); the kind is the name's suffix.
_MODELS = ("phi3_mini_4k", "phi3_medium_4k")
RECIPES = tuple(f"{model}_{kind}" for kind in ("pretrain", "sft", "peft") for model in _MODELS)


@hookimpl
def register_recipes(register):
    for name in RECIPES:
        register(name=name, recipe=f"bridge_phi.recipes:{name}", family="phi", kind=name.rsplit("_", 1)[1])
