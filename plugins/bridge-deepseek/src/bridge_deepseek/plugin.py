"""Entry point of bridge-deepseek: declares the contract and registers strings only.

bridge-core imports this module during discovery, in every process, before any model is used:
keep it tiny and never import torch, megatron or transformers here (the conformance tests check).
"""

from bridge_core import hookimpl

BRIDGE_CONTRACT = ">=1.1,<2"


@hookimpl
def register_bridges(register):
    register(
        architecture="DeepseekV3ForCausalLM", bridge="bridge_deepseek.bridge:DeepseekV3Bridge", model_type="deepseek_v3"
    )
    register(
        architecture="DeepseekV2ForCausalLM", bridge="bridge_deepseek.bridge:DeepseekV2Bridge", model_type="deepseek_v2"
    )


@hookimpl
def register_flops(register):
    register(block="deepseek_decoder_layer", function="bridge_deepseek.flops:decoder_layer_flops")


# Recipes in bridge_deepseek.recipes (imported only when one is used); the kind is the name's suffix.
_MODELS = ("deepseek_v2_lite", "deepseek_v3")
RECIPES = tuple(f"{model}_{kind}" for kind in ("pretrain", "sft", "peft") for model in _MODELS)


@hookimpl
def register_recipes(register):
    for name in RECIPES:
        register(name=name, recipe=f"bridge_deepseek.recipes:{name}", family="deepseek", kind=name.rsplit("_", 1)[1])
