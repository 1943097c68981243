"""Entry point of bridge-gpt-oss: declares the contract and registers strings only.

bridge-core imports this module during discovery, in every process, before any model is used:
keep it tiny and never import torch, megatron or transformers here (the conformance tests check).
"""

from bridge_core import hookimpl

BRIDGE_CONTRACT = ">=1.1,<2"


@hookimpl
def register_bridges(register):
    register(architecture="GptOssForCausalLM", bridge="bridge_gpt_oss.bridge:GptOssBridge", model_type="gpt_oss")


# Recipes in bridge_gpt_oss.recipes (imported only when one is used); the kind is the name's suffix.
_MODELS = ("gpt_oss_20b", "gpt_oss_120b")
RECIPES = tuple(f"{model}_{kind}" for kind in ("pretrain", "sft", "peft") for model in _MODELS)


@hookimpl
def register_recipes(register):
    for name in RECIPES:
        register(name=name, recipe=f"bridge_gpt_oss.recipes:{name}", family="gpt_oss", kind=name.rsplit("_", 1)[1])
