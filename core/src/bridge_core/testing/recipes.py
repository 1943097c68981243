"""Checks of a plugin's shipped recipes, for its own tests (no weights, no network, seconds per model).

``check_recipes(plugin, published)`` loads every recipe the plugin registers and, for each: resolves
it as ``bridgectl train --recipe NAME --dry-run --nproc GPUS`` does at the GPU count it was sized for;
builds its provider from the config values (the translation only: ``AutoConfig`` -> bridge ->
provider; an SFT recipe borrows its ``_pretrain`` twin's values) and configures it as ``train`` does
(model overrides, parallel sizes, megatron-core's own validation; ``sequence_parallel`` off without
CUDA, where torch's norms refuse it); checks that its parallel sizes divide
the model (heads, query groups, layers per pipeline stage, experts, the expert-parallel group); that
the provider's parameter count equals transformers' model of the same config values (built on the
meta device: no memory, no weights) within 0.1% (norm vectors), and the published size within ``rel``.
"""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

from bridge_core.training.recipe import Recipe


def family_recipes(plugin: str) -> list[Recipe]:
    """Every recipe the plugin with entry-point name ``plugin`` registers (the process registry is reset)."""
    from bridge_core.plugins.discovery import discover, reset_registry
    from bridge_core.training.recipe import load_recipe, recipe_registrations

    reset_registry(discover(environ={"BRIDGE_PLUGINS": plugin, "BRIDGE_STRICT_PLUGINS": "1"}))
    return [load_recipe(reg.name) for reg in recipe_registrations()]


def dry_run(name: str, world: int) -> dict[str, Any]:
    """``bridgectl train --recipe NAME --dry-run --nproc WORLD`` in-process: the resolved recipe as JSON."""
    from bridge_core.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["train", "--recipe", name, "--dry-run", "--nproc", str(world)])
    assert code == 0, f"{name}: train --dry-run --nproc {world} exited {code}"
    return json.loads(out.getvalue())


def recipe_provider(recipe: Recipe) -> Any:
    """The provider ``train`` would build for ``recipe`` from its config values (no weights)."""
    from bridge_core.training.model_source import model_source

    return model_source(recipe).provider


def parameter_count(provider: Any) -> int:
    """Parameters of the GPT model ``provider`` describes (unpadded vocabulary; norms as one vector each)."""
    h, layers = provider.hidden_size, provider.num_layers
    heads, groups = provider.num_attention_heads, provider.num_query_groups or provider.num_attention_heads
    head_dim = provider.kv_channels or h // heads
    q, kv = heads * head_dim, groups * head_dim
    attention = h * (q + 2 * kv) + q * h
    if provider.add_qkv_bias or provider.add_bias_linear:
        attention += q + 2 * kv
    if getattr(provider, "multi_latent_attention", False):
        attention = mla_parameter_count(provider)
    up = 2 if provider.gated_linear_unit else 1

    def mlp(ffn: int) -> int:
        return (up + 1) * h * ffn + (up * ffn + h if provider.add_bias_linear else 0)

    experts = provider.num_moe_experts
    moe_layers = 0
    if experts:
        freq = provider.moe_layer_freq
        moe_layers = sum(freq) if isinstance(freq, list) else len(range(0, layers, freq))
    moe = 0
    if experts:
        moe = experts * mlp(provider.moe_ffn_hidden_size) + experts * h
        shared = provider.moe_shared_expert_intermediate_size
        if shared:
            moe += mlp(shared) + (h if getattr(provider, "moe_shared_expert_gate", False) else 0)
    mla = getattr(provider, "multi_latent_attention", False)
    norms = 2 * h + (2 * head_dim if provider.qk_layernorm and not mla else 0)
    blocks = layers * (attention + norms) + moe_layers * moe + (layers - moe_layers) * mlp(provider.ffn_hidden_size)
    embeddings = provider.vocab_size * h * (1 if provider.share_embeddings_and_output_weights else 2)
    return blocks + embeddings + h


def mla_parameter_count(provider: Any) -> int:
    """One multi-latent attention block (megatron-core's ``MLATransformerConfig``): the q projection (or its
    low-rank down/norm/up), the kv down-projection with the shared rope key, its norm, the kv up-projection
    and the output projection."""
    h, heads = provider.hidden_size, provider.num_attention_heads
    q_head = provider.qk_head_dim + provider.qk_pos_emb_head_dim
    rank = provider.q_lora_rank
    q = h * heads * q_head if rank is None else h * rank + rank + rank * heads * q_head
    kv = h * (provider.kv_lora_rank + provider.qk_pos_emb_head_dim) + provider.kv_lora_rank
    kv += provider.kv_lora_rank * heads * (provider.qk_head_dim + provider.v_head_dim)
    return q + kv + heads * provider.v_head_dim * h


def hf_parameter_count(recipe: Recipe) -> int:
    """Parameters of transformers' model for ``recipe``'s config values, built on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(recipe.model.hf_config or {})
    config = AutoConfig.for_model(values.pop("model_type"), architectures=[recipe.model.architecture], **values)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def configured_provider(recipe: Recipe, values_from: Recipe) -> Any:
    """The provider ``train`` would run ``recipe`` with, for ``values_from``'s config values, validated by
    ``finalize()`` (megatron-core's checks); no weights, no process group."""
    import dataclasses

    from bridge_core.runtime.cpu_support import cuda_available
    from bridge_core.training.model_source import model_source
    from bridge_core.training.trainer import configure_provider

    config = recipe.config
    if not cuda_available() and config.parallel.sequence_parallel:
        config = dataclasses.replace(config, parallel=dataclasses.replace(config.parallel, sequence_parallel=False))
    return configure_provider(model_source(values_from), config)


def layout_problems(recipe: Recipe, provider: Any, world: int) -> list[str]:
    """What in ``recipe``'s parallel sizes does not divide the model ``provider`` describes at ``world`` ranks."""
    p = recipe.config.parallel
    problems = []
    for field in ("num_attention_heads", "num_query_groups", "ffn_hidden_size"):
        value = getattr(provider, field)
        if value and value % p.tp:
            problems.append(f"{field}={value} is not a multiple of tp={p.tp}")
    stages = p.pp * (p.vpp or 1)
    layers = provider.num_layers
    overrides = recipe.config.model
    first, last = (overrides.get(f"num_layers_in_{end}_pipeline_stage") for end in ("first", "last"))
    if first or last:  # an uneven split: the stages between the two ends share the rest evenly
        layers -= (first or 0) + (last or 0)
        stages = (p.pp - bool(first) - bool(last)) * (p.vpp or 1)
    if stages and layers % stages:
        problems.append(f"{layers} layers do not split evenly into {stages} pipeline stages (pp x vpp)")
    if p.ep > 1:
        experts = provider.num_moe_experts or 0
        etp = p.etp if p.etp is not None else p.tp
        if experts % p.ep:
            problems.append(f"num_moe_experts={experts} is not a multiple of ep={p.ep}")
        if world % (p.pp * p.ep * etp):
            problems.append(f"world {world} is not a multiple of pp x ep x etp = {p.pp * p.ep * etp}")
        if provider.moe_ffn_hidden_size % etp:
            problems.append(f"moe_ffn_hidden_size={provider.moe_ffn_hidden_size} is not a multiple of etp={etp}")
    return problems


def check_recipes(plugin: str, published: dict[str, float], rel: float = 0.02) -> dict[str, int]:
    """Check every recipe of ``plugin`` (see the module docstring); ``published``: model key (the recipe
    name without ``_pretrain``/``_sft``/``_peft``) -> published parameter count. Returns the counts measured."""
    recipes = {r.name: r for r in family_recipes(plugin)}
    assert recipes, f"plugin {plugin!r} registers no recipes"
    providers: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for name, recipe in sorted(recipes.items()):
        model, _, kind = name.rpartition("_")
        assert model in published, f"{name}: no published parameter count given for {model!r}"
        twin = recipes.get(f"{model}_pretrain")
        assert twin is not None and twin.model.hf_config, f"{name}: no {model}_pretrain recipe with config values"
        assert recipe.model.architecture == twin.model.architecture, name
        assert (recipe.model.hf_config is None) == (kind != "pretrain"), f"{name}: only pretrain recipes carry values"
        if kind == "peft":
            assert recipe.config.peft.scheme is not None, f"{name}: a peft recipe without peft.scheme"
        world = recipe.sized_for.gpus
        doc = dry_run(name, world)
        assert doc["name"] == name and doc["run"]["data_parallel"] >= 1, name
        recipe.config.check(world)
        positions = twin.model.hf_config.get("max_position_embeddings")
        seq = recipe.config.train.seq_length
        assert positions is None or seq <= positions, f"{name}: seq_length {seq} > {positions} positions"
        if model not in providers:
            providers[model] = recipe_provider(twin)
            counts[model] = parameter_count(providers[model])
            reference = hf_parameter_count(twin)
            assert abs(counts[model] - reference) <= 1e-3 * reference, (
                f"{name}: the provider has {counts[model]:,} parameters, transformers' model {reference:,}"
            )
        provider = configured_provider(recipe, twin)
        assert not layout_problems(recipe, provider, world), (name, layout_problems(recipe, provider, world))
        measured, expected = counts[model], published[model]
        assert abs(measured - expected) <= rel * expected, (
            f"{name}: {measured / 1e9:.3f}B parameters, published {expected / 1e9:.3f}B"
        )
    return counts
