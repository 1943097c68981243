{%- set archs = cookiecutter.architectures.split(',') | map('trim') | list -%}
"""Training recipes of {{ cookiecutter.__project_slug }} (contract 1.1): typed, declarative, network-free, torch-free.

``plugin.py`` registers ``{{ cookiecutter.family }}_pretrain``, ``{{ cookiecutter.family }}_sft`` and
``{{ cookiecutter.family }}_peft``; ``bridgectl recipes`` lists them, ``bridgectl recipe show NAME`` prints one
resolved, and ``bridgectl train --recipe NAME`` runs it on megatron-core (``key=value`` overrides, e.g.
``train.iters=20 parallel.tp=2``):

    bridgectl train --recipe {{ cookiecutter.family }}_pretrain --dry-run checkpoint.save=runs/pre
    bridgectl train --recipe {{ cookiecutter.family }}_sft --hf-model path/to/hf --nproc 8 checkpoint.save=runs/sft
    bridgectl train --recipe {{ cookiecutter.family }}_peft --hf-model path/to/hf --nproc 8 checkpoint.save=runs/peft
    bridgectl peft export --megatron-path runs/peft --hf-path adapter

A pretrain recipe carries the config.json values of the model it builds from scratch; an SFT recipe
trains the ``--hf-model`` folder (or ``--megatron-path`` checkpoint) of its architecture, and a PEFT
recipe trains LoRA (or DoRA) adapters on it, the base frozen (``peft.*`` settings). The base
settings are Megatron-Bridge's (``bridge_core.training.defaults``). Replace ``MODEL`` with the published
config.json values of each size you ship (one ``<family>_<size>_pretrain`` / ``_sft`` / ``_peft`` set per size,
named as Megatron-Bridge names them), and ``SIZED_FOR`` / ``PARALLEL`` with what each was sized for.
"""

from __future__ import annotations

from typing import Any

from bridge_core.training.defaults import peft_config, pretrain_config, sft_config
from bridge_core.training.recipe import ModelSpec, Recipe, SizedFor

FAMILY = "{{ cookiecutter.family }}"
ARCHITECTURE = "{{ archs[0] }}"
# The model {{ cookiecutter.family }}_pretrain builds (config.json values): a small placeholder of the family's
# shape, so that the recipe runs anywhere; put the published values of a real size here.
MODEL: dict[str, Any] = {
    "model_type": "{{ cookiecutter.model_type }}",
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}
SIZED_FOR = SizedFor(gpus=1, note="placeholder model; size each real recipe for its model")
PARALLEL: dict[str, int] = {}  # e.g. {"tp": 2, "pp": 2, "ep": 8}: what the recipe was sized for


def {{ cookiecutter.family }}_pretrain() -> Recipe:
    """Pretraining from scratch on mock data (``data.kind=pretrain data.paths=PREFIX`` for real data)."""
    return Recipe(
        name=f"{FAMILY}_pretrain",
        family=FAMILY,
        kind="pretrain",
        model=ModelSpec(ARCHITECTURE, MODEL),
        config=pretrain_config(**PARALLEL),
        sized_for=SIZED_FOR,
        description=f"{FAMILY} placeholder model: pretraining from scratch on mock data",
    )


def {{ cookiecutter.family }}_sft() -> Recipe:
    """Full fine-tuning of the ``--hf-model`` folder on ``data.sft_prefix`` (from ``bridgectl data prepare``)."""
    return Recipe(
        name=f"{FAMILY}_sft",
        family=FAMILY,
        kind="sft",
        model=ModelSpec(ARCHITECTURE),
        config=sft_config(**PARALLEL),
        sized_for=SIZED_FOR,
        description=f"{ARCHITECTURE}: full fine-tuning of --hf-model",
    )


def {{ cookiecutter.family }}_peft() -> Recipe:
    """LoRA fine-tuning of the ``--hf-model`` folder on ``data.sft_prefix``: rank 32, alpha 32 on linear_qkv,
    linear_proj, linear_fc1, linear_fc2 (``peft.scheme=dora``, ``peft.rank``, ``peft.targets`` ... override it);
    ``bridgectl peft export`` writes the HF PEFT adapter, ``bridgectl peft merge`` the merged HF model."""
    return Recipe(
        name=f"{FAMILY}_peft",
        family=FAMILY,
        kind="peft",
        model=ModelSpec(ARCHITECTURE),
        config=peft_config(**PARALLEL),
        sized_for=SIZED_FOR,
        description=f"{ARCHITECTURE}: LoRA fine-tuning of --hf-model (peft.scheme=dora for DoRA)",
    )
