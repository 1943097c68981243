"""Hook specifications of contract 1.x (pluggy project ``bridge_core``).

A plugin's entry-point module implements any of these with ``@bridge_core.hookimpl``. Each hook
receives a ``register`` callback owned by the core; call it with keyword arguments only. Hooks must
not import torch, megatron or transformers: register ``"module:attribute"`` strings, which the core
imports only when they are used.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT_NAME = "bridge_core"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_bridges(register: Callable[..., None]) -> None:
    """Register model bridges.

    ``register(architecture="Qwen2ForCausalLM", bridge="bridge_qwen.qwen2:Qwen2Bridge",
    model_type="qwen2", override=False)``: ``architecture`` is an entry of ``config.architectures``;
    ``bridge`` names a ``MegatronModelBridge`` subclass. Registering an architecture that another
    plugin registered is an error unless ``override=True``.
    """


@hookspec
def register_recipes(register: Callable[..., None]) -> None:
    """Register training recipes.

    ``register(name="qwen3_8b_sft", recipe="bridge_qwen.recipes:qwen3_8b_sft", family="qwen",
    kind="sft")``: ``recipe`` names a function returning a ``bridge_core.training.recipe.Recipe``;
    ``kind`` is one of ``pretrain``, ``sft``, ``peft``.
    """


@hookspec
def register_flops(register: Callable[..., None]) -> None:
    """Register FLOPs contributions of model blocks.

    ``register(block="mixtral_decoder_layer", function="bridge_mixtral.flops:decoder_layer_flops")``:
    the function takes the provider and returns forward FLOPs per token for one such block. A bridge
    uses it by naming it (``FLOPS_DECODER_LAYER = "mixtral_decoder_layer"``): it then replaces the
    core's count of each decoder layer's sequence-independent matmuls (``bridge_core.training.flops``).
    """
