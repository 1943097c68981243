"""The ``Recipe`` a plugin ships (declarative, network-free, torch-free) and the lookup of installed ones.

A plugin registers ``register(name=..., recipe="pkg.recipes:name", family=..., kind=...)``; the
target is a ``Recipe`` or a zero-argument function returning one (Megatron-Bridge's shape). Listing
recipes reads the registrations only; ``load_recipe`` imports the one module that defines it.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from bridge_core.errors import ConfigError, PluginError
from bridge_core.training.config import TrainingConfig, apply_overrides

KINDS = ("pretrain", "sft", "peft")


@dataclass(frozen=True)
class ModelSpec:
    """The model a recipe is for: an HF architecture, and its config values or the user's HF folder.

    ``hf_config`` (config.json values, ``model_type`` included) builds the model from scratch with
    no download; ``None`` means the recipe needs ``--hf-model`` (an HF folder of that architecture).
    """

    architecture: str
    hf_config: dict[str, Any] | None = None

    @property
    def needs_hf_folder(self) -> bool:
        return self.hf_config is None


@dataclass(frozen=True)
class SizedFor:
    """The hardware a recipe's defaults were sized for (documentation; the run adapts to its world)."""

    gpus: int
    gpu: str = "H100/H200 80+ GB"
    note: str = ""


@dataclass
class Recipe:
    """A named, typed training set-up of one model family."""

    name: str
    family: str
    kind: str
    model: ModelSpec
    config: TrainingConfig = field(default_factory=TrainingConfig)
    sized_for: SizedFor = field(default_factory=lambda: SizedFor(gpus=8))
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"recipe {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.config, TrainingConfig):
            raise ConfigError(
                f"recipe {self.name!r}: config must be a TrainingConfig, got {type(self.config).__name__}"
            )

    def with_overrides(self, overrides: list[str]) -> Recipe:
        """This recipe with dotted ``key=value`` overrides applied (checked against the field types)."""
        return dataclasses.replace(self, config=apply_overrides(self.config, overrides))

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain JSON values (what ``--dry-run`` prints and checkpoints store)."""
        return {
            "name": self.name,
            "family": self.family,
            "kind": self.kind,
            "model": {"architecture": self.model.architecture, "hf_config": self.model.hf_config},
            "sized_for": dataclasses.asdict(self.sized_for),
            "description": self.description,
            "config": self.config.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Recipe:
        """Rebuild a recipe saved with ``to_dict`` (e.g. from a checkpoint's ``training_config.json``)."""
        model = values["model"]
        return cls(
            name=values["name"],
            family=values["family"],
            kind=values["kind"],
            model=ModelSpec(model["architecture"], model.get("hf_config")),
            config=TrainingConfig.from_dict(values["config"]),
            sized_for=SizedFor(**values.get("sized_for", {"gpus": 1})),
            description=values.get("description", ""),
        )


def recipe_registrations() -> list[Any]:
    """Every installed recipe's registration (name, target, family, kind, distribution), by name."""
    from bridge_core.plugins.discovery import get_registry

    return sorted(get_registry().recipes.values(), key=lambda r: r.name)


def load_recipe(name: str) -> Recipe:
    """Import and return the installed recipe ``name`` (a one-line error naming the choices otherwise)."""
    from bridge_core.plugins.discovery import get_registry
    from bridge_core.plugins.registry import import_target

    registry = get_registry()
    reg = registry.recipes.get(name)
    if reg is None:
        names = sorted(registry.recipes)
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        listed = ", ".join(names) if names else "none (pip install bridge-<family>, e.g. bridge-llama)"
        raise ConfigError(f"unknown recipe {name!r}{hint} (installed: {listed}; see 'bridgectl recipes')")
    try:
        target = import_target(reg.recipe)
        recipe = target() if callable(target) and not isinstance(target, Recipe) else target
    except Exception as exc:
        raise PluginError(
            f"{reg.distribution} {reg.version} registers recipe {name!r} as {reg.recipe}, which fails to load: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(recipe, Recipe):
        raise PluginError(
            f"{reg.distribution}: {reg.recipe} is not a bridge_core.training.Recipe (got {type(recipe).__name__})"
        )
    if (recipe.name, recipe.family, recipe.kind) != (reg.name, reg.family, reg.kind):
        raise PluginError(
            f"{reg.distribution}: {reg.recipe} is recipe {recipe.name!r} ({recipe.family}, {recipe.kind}) but is "
            f"registered as {reg.name!r} ({reg.family}, {reg.kind})"
        )
    return recipe
