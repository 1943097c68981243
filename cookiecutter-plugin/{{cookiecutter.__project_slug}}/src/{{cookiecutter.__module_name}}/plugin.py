{%- set archs = cookiecutter.architectures.split(',') | map('trim') | list -%}
"""Entry point of {{ cookiecutter.__project_slug }}: declares the contract and registers strings only.

bridge-core imports this module during discovery, in every process, before any model is used:
keep it tiny and never import torch, megatron or transformers here (the conformance tests check).
"""

from bridge_core import hookimpl

BRIDGE_CONTRACT = ">={{ cookiecutter.__core_version }},<{{ cookiecutter.__core_next_major }}"


@hookimpl
def register_bridges(register):
{%- for arch in archs %}
    register(
        architecture="{{ arch }}",
        bridge="{{ cookiecutter.__module_name }}.bridge:{{ arch | replace('ForCausalLM', '') | replace('ForConditionalGeneration', '') }}Bridge",
        model_type="{{ cookiecutter.model_type }}",
    )
{%- endfor %}


# Recipes in {{ cookiecutter.__module_name }}.recipes (imported only when one is used); the kind is the name's suffix.
RECIPES = (
    "{{ cookiecutter.family }}_pretrain",
    "{{ cookiecutter.family }}_sft",
    "{{ cookiecutter.family }}_peft",
)


@hookimpl
def register_recipes(register):
    for name in RECIPES:
        register(
            name=name,
            recipe=f"{{ cookiecutter.__module_name }}.recipes:{name}",
            family="{{ cookiecutter.family }}",
            kind=name.rsplit("_", 1)[1],
        )


@hookimpl
def register_flops(register):
    register(
        block="{{ cookiecutter.family }}_decoder_layer",
        function="{{ cookiecutter.__module_name }}.flops:decoder_layer_flops",
    )
