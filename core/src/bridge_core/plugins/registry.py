"""The plugin registry: who registered which bridge, recipe and FLOPs contribution.

The registry holds strings only ("module:attribute"); nothing heavy is imported until a bridge or
recipe is used. It knows nothing of entry points: ``discovery`` fills one, and holds the process-wide one
(``discovery.get_registry()``).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import pluggy

from bridge_core.errors import BridgeError, PluginError, UnsupportedArchitectureError
from bridge_core.plugins import hookspecs
from bridge_core.plugins.contract import (
    ContractRangeError,
    contract_satisfies,
    incompatibility_fix,
    parse_contract_range,
)
from bridge_core.plugins.known_plugins import KNOWN_ARCHITECTURES, NOT_PUBLISHED, install_hint, not_published_hint

LOADED, FAILED, INCOMPATIBLE, BLOCKED = "loaded", "failed", "incompatible", "blocked"
RECIPE_KINDS = ("pretrain", "sft", "peft")
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass(frozen=True)
class BridgeRegistration:
    """An HF architecture served by a bridge class, and the plugin that registered it."""

    architecture: str
    bridge: str
    model_type: str | None
    plugin: str
    distribution: str
    version: str
    override: bool = False


@dataclass(frozen=True)
class RecipeRegistration:
    """A named training recipe (``"module:function"``) of a model family."""

    name: str
    recipe: str
    family: str
    kind: str
    plugin: str
    distribution: str
    version: str


@dataclass(frozen=True)
class FlopsRegistration:
    """A model block's FLOPs-per-token function (``"module:function"``)."""

    block: str
    function: str
    plugin: str
    distribution: str
    version: str


@dataclass
class PluginRecord:
    """One installed plugin as discovery saw it: identity, status and what it registered."""

    name: str
    distribution: str
    version: str
    entry_point: str
    contract: str | None = None
    status: str = LOADED
    reason: str = ""
    architectures: list[str] = field(default_factory=list)  # the ones this plugin serves
    overridden: dict[str, str] = field(default_factory=dict)  # architecture -> distribution serving it
    recipes: list[str] = field(default_factory=list)
    flops: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_target(target: str) -> Any:
    """Import a ``"module:attribute"`` string (attribute may be dotted)."""
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def normalize(name: str) -> str:
    """PEP 503 normalisation: ``Bridge_Qwen`` and ``bridge.qwen`` both become ``bridge-qwen``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception a plugin raised, on one line (``SystemExit`` shows its code)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, SystemExit):
        return f"SystemExit (sys.exit({exc.code!r}))"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_target(kind: str, value: object) -> str:
    if not isinstance(value, str) or not _TARGET.match(value):
        raise PluginError(f"{kind} must be a 'module:attribute' string, got {value!r}")
    return value


class _Staging:
    """Collects one plugin's registrations so they are committed all together or not at all."""

    def __init__(self, record: PluginRecord):
        self.record = record
        self.bridges: list[BridgeRegistration] = []
        self.recipes: list[RecipeRegistration] = []
        self.flops: list[FlopsRegistration] = []

    def _who(self) -> dict[str, str]:
        r = self.record
        return {"plugin": r.name, "distribution": r.distribution, "version": r.version}

    def register_bridge(
        self, *, architecture: str, bridge: str, model_type: str | None = None, override: bool = False
    ) -> None:
        if not isinstance(architecture, str) or not architecture:
            raise PluginError(f"architecture must be a non-empty string, got {architecture!r}")
        reg = BridgeRegistration(
            architecture, _check_target("bridge", bridge), model_type, override=bool(override), **self._who()
        )
        self.bridges.append(reg)

    def register_recipe(self, *, name: str, recipe: str, family: str, kind: str) -> None:
        if kind not in RECIPE_KINDS:
            raise PluginError(f"recipe {name!r}: kind must be one of {', '.join(RECIPE_KINDS)}, got {kind!r}")
        self.recipes.append(RecipeRegistration(name, _check_target("recipe", recipe), family, kind, **self._who()))

    def register_flops(self, *, block: str, function: str) -> None:
        self.flops.append(FlopsRegistration(block, _check_target("function", function), **self._who()))


class Registry:
    """Installed plugins and their registrations. Build one with discovery or register in-process."""

    def __init__(self) -> None:
        self.plugins: list[PluginRecord] = []
        self.bridges: dict[str, BridgeRegistration] = {}
        self.recipes: dict[str, RecipeRegistration] = {}
        self.flops: dict[str, FlopsRegistration] = {}
        self.conflicts: dict[str, str] = {}  # architecture -> why it cannot be used
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)

    # -- adding plugins -------------------------------------------------------------------------
    def record(self, record: PluginRecord) -> PluginRecord:
        """Record a plugin that was not loaded (blocked, or failed before its module imported)."""
        self.plugins.append(record)
        return record

    def add_plugin(
        self,
        plugin: Any,
        *,
        name: str,
        distribution: str = "",
        version: str = "0",
        entry_point: str = "",
        strict: bool = False,
    ) -> PluginRecord:
        """Check a loaded plugin object's contract, call its hooks and commit its registrations.

        On any problem the plugin is recorded as ``failed``/``incompatible`` and nothing it
        registered is kept; with ``strict`` the problem is raised as ``PluginError`` instead.
        """
        from bridge_core import __version__ as core_version

        record = PluginRecord(
            name=name,
            distribution=distribution or name,
            version=version,
            entry_point=entry_point or getattr(plugin, "__name__", type(plugin).__name__),
        )
        self.plugins.append(record)
        where = f"plugin {name!r} ({record.entry_point})"
        try:
            declared = getattr(plugin, "BRIDGE_CONTRACT", None)
            record.contract = declared if isinstance(declared, str) else None
            spec = parse_contract_range(declared, where=where)
            if not contract_satisfies(spec):
                record.status = INCOMPATIBLE
                raise PluginError(
                    incompatibility_fix(
                        spec, distribution=record.distribution, dist_version=version, core_version=core_version
                    )
                )
            self._commit(self._call_hooks(plugin, record, where))
        except (PluginError, ContractRangeError) as exc:
            return self._fail(plugin, record, str(exc), strict, exc)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a plugin's own bug (sys.exit included) must not end the host
            return self._fail(plugin, record, f"{where} raised {describe(exc)}", strict, exc)
        return record

    def _fail(self, plugin: Any, record: PluginRecord, reason: str, strict: bool, exc: BaseException) -> PluginRecord:
        if self._pm.is_registered(plugin):
            self._pm.unregister(plugin)
        if record.status == LOADED:
            record.status = FAILED
        record.reason = reason
        record.architectures, record.recipes, record.flops = [], [], []
        record.overridden = {}
        if strict:
            raise PluginError(reason) from exc
        return record

    def _call_hooks(self, plugin: Any, record: PluginRecord, where: str) -> _Staging:
        try:
            self._pm.register(plugin, name=record.name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"{where}: {exc}") from exc
        try:
            self._pm.check_pending()
            others = [p for p in self._pm.get_plugins() if p is not plugin]
            staging = _Staging(record)
            callbacks = {
                "register_bridges": staging.register_bridge,
                "register_recipes": staging.register_recipe,
                "register_flops": staging.register_flops,
            }
            for hook_name, callback in callbacks.items():
                self._pm.subset_hook_caller(hook_name, remove_plugins=others)(register=callback)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"{where}: {exc}") from exc
        return staging

    def _commit(self, staging: _Staging) -> None:
        record = staging.record
        accepted: list[BridgeRegistration] = []
        shadowed: dict[str, str] = {}
        for reg in staging.bridges:
            existing = self.bridges.get(reg.architecture)
            if existing is None or (reg.override and not existing.override):
                accepted.append(reg)
            elif existing.override and not reg.override:
                shadowed[reg.architecture] = existing.distribution
            else:
                self._conflict(existing, reg)
        for kind, new, table, key in (
            ("recipe", staging.recipes, self.recipes, "name"),
            ("FLOPs block", staging.flops, self.flops, "block"),
        ):
            for item in new:
                other = table.get(getattr(item, key))
                if other is not None:
                    raise PluginError(
                        f"{kind} {getattr(item, key)!r} is registered by both {other.distribution} "
                        f"and {item.distribution}"
                    )
        for reg in accepted:
            previous = self.bridges.get(reg.architecture)
            if previous is not None:
                self._move_to_overridden(previous, reg.distribution)
            self.bridges[reg.architecture] = reg
            if reg.override:  # an explicit override settles an earlier conflict
                self.conflicts.pop(reg.architecture, None)
        for recipe in staging.recipes:
            self.recipes[recipe.name] = recipe
        for flops in staging.flops:
            self.flops[flops.block] = flops
        record.architectures = [r.architecture for r in accepted]
        record.overridden = shadowed
        record.recipes = [r.name for r in staging.recipes]
        record.flops = [r.block for r in staging.flops]

    def _conflict(self, existing: BridgeRegistration, reg: BridgeRegistration) -> None:
        """Two plain registrations, or two overrides, of one architecture: no one serves it."""
        both = f"{existing.distribution} {existing.version} and {reg.distribution} {reg.version}"
        if reg.override:
            conflict = f"{reg.architecture} is registered with override=True by both {both}; uninstall one"
        else:
            conflict = f"{reg.architecture} is registered by both {both}; uninstall one, or register with override=True"
        self.conflicts.setdefault(reg.architecture, conflict)
        raise PluginError(conflict)

    def _move_to_overridden(self, previous: BridgeRegistration, winner: str) -> None:
        for record in self.plugins:
            if record.name == previous.plugin and previous.architecture in record.architectures:
                record.architectures.remove(previous.architecture)
                record.overridden[previous.architecture] = winner

    # -- lookups --------------------------------------------------------------------------------
    def bridge_for(self, architecture: str) -> BridgeRegistration:
        """The registration serving ``architecture``, or an error that says what to install.

        An architecture two plugins registered (neither with ``override=True``) is an error naming both,
        whichever of them was discovered first.
        """
        if architecture in self.conflicts:
            raise PluginError(self.conflicts[architecture])
        reg = self.bridges.get(architecture)
        if reg is not None:
            return reg
        raise UnsupportedArchitectureError(self._unsupported_message(architecture))

    def load_bridge_class(self, architecture: str) -> type:
        """Import and return the bridge class registered for ``architecture``."""
        reg = self.bridge_for(architecture)
        try:
            bridge_cls: type = import_target(reg.bridge)  # a class by the contract; not checked here
            return bridge_cls
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            raise PluginError(
                f"{reg.distribution} {reg.version} registers {architecture} as {reg.bridge} "
                f"(plugin {reg.plugin!r}), which fails to import: {describe(exc)}"
            ) from exc

    def create_bridge(self, architecture: str, *args: Any, **kwargs: Any) -> Any:
        """An instance of ``architecture``'s bridge class; its own failure is a ``PluginError`` naming it.

        A ``BridgeError`` the bridge raises on purpose (a config it refuses) passes through unchanged.
        """
        bridge_cls = self.load_bridge_class(architecture)
        try:
            return bridge_cls(*args, **kwargs)
        except (KeyboardInterrupt, BridgeError):
            raise
        except BaseException as exc:
            reg = self.bridges[architecture]
            raise PluginError(
                f"plugin {reg.plugin!r} ({reg.distribution} {reg.version}): bridge {reg.bridge} "
                f"failed to start for {architecture}: {describe(exc)}"
            ) from exc

    def _unsupported_message(self, architecture: str) -> str:
        loaded = [f"{p.distribution} {p.version}" for p in self.plugins if p.status == LOADED]
        installed = ", ".join(loaded) if loaded else "none"
        msg = f"{architecture} is not supported by any loaded plugin (loaded: {installed})"
        if architecture in NOT_PUBLISHED:
            return msg + "; " + not_published_hint(architecture)
        dist = KNOWN_ARCHITECTURES.get(architecture)
        if dist is None:
            return msg + "; no known plugin provides it: write one with 'bridgectl new-plugin'"
        mine = [p for p in self.plugins if normalize(p.distribution) == dist]
        if mine and mine[0].status != LOADED:
            p = mine[0]
            return msg + f"; {p.distribution} {p.version} is installed but {p.status}: {p.reason}"
        if mine:  # installing it again would not help; the version is the installed distribution's
            p = mine[0]
            return msg + f"; {architecture} is not supported by the installed {p.distribution} {p.version}"
        return msg + f"; {architecture}: {install_hint(dist)}"

    def supported_architectures(self) -> list[str]:
        return sorted(self.bridges)
