"""Entry point of bridge-mixtral: declares the contract and registers strings only.

bridge-core imports this module during discovery, in every process, before any model is used:
keep it tiny and never import torch, megatron or transformers here (the conformance tests check).
"""

from bridge_core import hookimpl

BRIDGE_CONTRACT = ">=1.1,<2"


@hookimpl
def register_bridges(register):
    register(architecture="MixtralForCausalLM", bridge="bridge_mixtral.bridge:MixtralBridge", model_type="mixtral")


@hookimpl
def register_flops(register):
    register(block="mixtral_decoder_layer", function="bridge_mixtral.flops:decoder_layer_flops")


# Recipes in bridge_mixtral.recipes (imported only when one is used); the kind is the name's suffix.
_MODELS = ("mixtral_8x7b", "mixtral_8x22b")
RECIPES = tuple(f"{model}_{kind}" for kind in ("pretrain", "sft", "peft") for model in _MODELS)


@hookimpl
def register_recipes(register):
    for name in RECIPES:
        register(name=name, recipe=f"bridge_mixtral.recipes:{name}", family="mixtral", kind=name.rsplit("_", 1)[1])
