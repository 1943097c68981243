"""Where a run's model comes from: the recipe's config values, an HF folder, or a Megatron checkpoint.

Each gives the bridge, the provider (before parallel sizes are applied), a pre-DDP hook that fills
the weights (or none: random initialisation), the provenance to save and the tokenizer files.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge_core.errors import ConfigError
from bridge_core.training.recipe import Recipe


@dataclass
class ModelSource:
    bridge: Any
    provider: Any
    load_weights: Callable[[list], Any] | None
    provenance: dict
    tokenizer_files: list[Path]
    label: str

    @property
    def architecture(self) -> str:
        return self.bridge.hf.architecture


def _check_architecture(recipe: Recipe, architecture: str, where: str) -> None:
    if architecture != recipe.model.architecture:
        raise ConfigError(
            f"recipe {recipe.name!r} is for {recipe.model.architecture}, but {where} is a {architecture}; "
            f"pick a recipe of that family ('bridgectl recipes')"
        )


def _parallelism(recipe: Recipe) -> Any:
    from bridge_core.runtime.parallelism import Parallelism

    p = recipe.config.parallel
    return Parallelism(tp=p.tp, pp=p.pp, ep=p.ep, etp=p.etp)


def model_source(
    recipe: Recipe, hf_model: str | Path | None = None, megatron_path: str | Path | None = None
) -> ModelSource:
    """The model for ``recipe``: weights from ``megatron_path`` or ``hf_model``, else built from its config."""
    from bridge_core.conversion.auto_bridge import AutoBridge
    from bridge_core.conversion.workflows import provenance

    if megatron_path is not None:
        return _from_megatron(recipe, Path(megatron_path), hf_model)
    if hf_model is not None:
        bridge = AutoBridge.from_hf_pretrained(hf_model)
        _check_architecture(recipe, bridge.hf.architecture, f"--hf-model {hf_model}")
        provider = bridge.to_megatron_provider()
        provider.perform_initialization = False  # every parameter is filled (and coverage-checked)
        return ModelSource(
            bridge,
            provider,
            lambda chunks: bridge.load_hf_weights(chunks),
            provenance(bridge, str(hf_model), _parallelism(recipe)),
            bridge.hf.side_files(),
            str(hf_model),
        )
    if recipe.model.needs_hf_folder:
        raise ConfigError(
            f"recipe {recipe.name!r} trains an existing model: pass --hf-model HF_FOLDER or --megatron-path CKPT"
        )
    from transformers import AutoConfig

    values = dict(recipe.model.hf_config or {})
    model_type = values.pop("model_type")
    config = AutoConfig.for_model(model_type, architectures=[recipe.model.architecture], **values)
    bridge = AutoBridge.from_hf_config(config)
    provider = bridge.to_megatron_provider()
    label = f"recipe:{recipe.name}"
    return ModelSource(bridge, provider, None, provenance(bridge, label, _parallelism(recipe)), [], label)


def _from_megatron(recipe: Recipe, path: Path, hf_model: str | Path | None) -> ModelSource:
    from bridge_core.checkpoints.megatron_checkpoint import load_megatron_checkpoint, load_weights_into
    from bridge_core.conversion.auto_bridge import AutoBridge
    from bridge_core.conversion.workflows import _hf_config_folder

    info = load_megatron_checkpoint(path)
    with tempfile.TemporaryDirectory(prefix="bridgectl-config-") as tmp:
        reference = hf_model if hf_model is not None else _hf_config_folder(info, Path(tmp))
        bridge = AutoBridge.from_hf_pretrained(reference)
        _ = bridge.hf.config  # read while the folder exists
    _check_architecture(recipe, bridge.hf.architecture, f"--megatron-path {path}")
    provider = bridge.bridge.PROVIDER_CLASS(**info.provider_kwargs(bridge.bridge.PROVIDER_CLASS))
    provider.perform_initialization = False
    tokenizer = sorted(info.tokenizer_dir.iterdir()) if info.tokenizer_dir else bridge.hf.side_files()
    provenance = {**info.provenance, "trained_from": str(path)}
    return ModelSource(
        bridge, provider, lambda chunks: load_weights_into(chunks, info), provenance, tokenizer, str(path)
    )
