"""A family's recipes from its tables: one zero-argument function per (model, kind), named as the recipe.

A plugin's ``recipes.py`` keeps the published sizes as data and calls ``define_recipes`` once::

    MODELS = {"phi3_mini_4k": ("Phi-3-mini-4k-instruct", {"architecture": "Phi3ForCausalLM", ...})}
    PRETRAIN = {"phi3_mini_4k": (8, {"tp": 1}, {})}   # model -> (GPUs, parallel sizes, train-loop values)
    NAMES = define_recipes(globals(), "phi", MODELS, PRETRAIN, sft=PRETRAIN)

``phi3_mini_4k_pretrain`` and ``phi3_mini_4k_sft`` are then module attributes (the ``"module:name"``
targets ``plugin.py`` registers). Torch-free: building a recipe reads no weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from bridge_core.training.config import TrainingConfig
from bridge_core.training.defaults import peft_config, pretrain_config, sft_config
from bridge_core.training.recipe import ModelSpec, Recipe, SizedFor

# model -> (GPUs it was sized for, parallel sizes for the defaults, train-loop field values)
SizeTable = Mapping[str, tuple[int, dict[str, Any], dict[str, Any]]]


def table_recipe(
    family: str,
    model: str,
    kind: str,
    models: Mapping[str, tuple[str, dict[str, Any]]],
    sizes: SizeTable,
    model_overrides: Mapping[str, dict[str, Any]] | None = None,
    adjust: Callable[[str, TrainingConfig], None] | None = None,
) -> Recipe:
    """The ``kind`` recipe of ``model``: pretrain recipes carry its config values, SFT and PEFT ones train
    ``--hf-model``."""
    title, values = models[model]
    hf_config = {k: v for k, v in values.items() if k != "architecture"}
    gpus, parallel, train = sizes[model]
    config = {"pretrain": pretrain_config, "sft": sft_config, "peft": peft_config}[kind](**parallel)
    config.train = dataclasses.replace(config.train, **train)
    config.model.update((model_overrides or {}).get(model, {}))
    if adjust is not None:
        adjust(model, config)
    what = {
        "pretrain": "pretraining from scratch on mock data",
        "sft": "full fine-tuning of --hf-model",
        "peft": "LoRA fine-tuning of --hf-model (peft.scheme=dora for DoRA)",
    }[kind]
    return Recipe(
        name=f"{model}_{kind}",
        family=family,
        kind=kind,
        model=ModelSpec(values["architecture"], hf_config if kind == "pretrain" else None),
        config=config,
        sized_for=SizedFor(gpus=gpus),
        description=f"{title}: {what}",
    )


def define_recipes(
    namespace: dict[str, Any],
    family: str,
    models: Mapping[str, tuple[str, dict[str, Any]]],
    pretrain: SizeTable,
    sft: SizeTable,
    model_overrides: Mapping[str, dict[str, Any]] | None = None,
    adjust: Callable[[str, TrainingConfig], None] | None = None,
) -> tuple[str, ...]:
    """Put ``<model>_pretrain`` (every model of ``pretrain``), ``<model>_sft`` and ``<model>_peft`` (of ``sft``)
    into ``namespace`` as zero-argument functions; returns their names."""

    def function(model: str, kind: str, sizes: SizeTable) -> Callable[[], Recipe]:
        def recipe() -> Recipe:
            return table_recipe(family, model, kind, models, sizes, model_overrides, adjust)

        recipe.__name__ = recipe.__qualname__ = f"{model}_{kind}"
        recipe.__doc__ = f"The {kind} recipe of {models[model][0]}."
        return recipe

    names = []
    for kind, sizes in (("pretrain", pretrain), ("sft", sft), ("peft", sft)):
        for model in sizes:
            namespace[f"{model}_{kind}"] = function(model, kind, sizes)
            names.append(f"{model}_{kind}")
    return tuple(names)
