"""Plugin discovery through the ``bridge_core.plugins`` entry-point group, and the process-wide registry.

``get_registry()`` discovers on first need, once per process, into a ``registry.Registry``. Imports each plugin's tiny
entry-point module only; never torch, megatron or transformers, never CUDA. Environment variables:
``BRIDGE_PLUGINS`` selects (unset: all, empty: none, else a comma list of entry-point or distribution
names), ``BRIDGE_DISABLE_PLUGINS`` blocks, ``BRIDGE_STRICT_PLUGINS=1`` raises instead of skipping.
Plugin code may fail in any way but Ctrl-C (``sys.exit()`` too): that plugin is recorded as failed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator, Mapping

import importlib_metadata

from bridge_core.errors import ConfigError, PluginError
from bridge_core.plugins.registry import BLOCKED, FAILED, PluginRecord, Registry, describe, normalize

ENTRY_POINT_GROUP = "bridge_core.plugins"


def _names(value: str) -> set[str]:
    return {normalize(part.strip()) for part in value.split(",") if part.strip()}


STRICT_ON = ("1", "true", "yes", "on")
STRICT_OFF = ("", "0", "false", "no", "off")


def is_strict(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``BRIDGE_STRICT_PLUGINS`` asks for plugin problems to be raised.

    A value that is neither on (1/true/yes/on) nor off (unset, empty, 0/false/no/off) is an error.
    """
    env = os.environ if environ is None else environ
    raw = env.get("BRIDGE_STRICT_PLUGINS", "")
    value = raw.strip().lower()
    if value not in STRICT_ON + STRICT_OFF:
        raise ConfigError(f"BRIDGE_STRICT_PLUGINS={raw!r}: expected 1/true/yes/on or 0/false/no/off (or unset)")
    return value in STRICT_ON


def _blocked_reason(ep_name: str, dist_name: str, env: Mapping[str, str]) -> str | None:
    ids = {normalize(ep_name), normalize(dist_name)}
    selected = env.get("BRIDGE_PLUGINS")
    if selected is not None and not ids & _names(selected):
        return f"not selected by BRIDGE_PLUGINS={selected!r}"
    disabled = env.get("BRIDGE_DISABLE_PLUGINS", "")
    if ids & _names(disabled):
        return f"blocked by BRIDGE_DISABLE_PLUGINS={disabled!r}"
    return None


def _entry_points() -> list[importlib_metadata.EntryPoint]:
    seen: dict[tuple[str, str], importlib_metadata.EntryPoint] = {}
    for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = normalize(ep.dist.name) if ep.dist is not None else ""
        seen.setdefault((ep.name, dist), ep)
    return [seen[key] for key in sorted(seen)]


def discover(registry: Registry | None = None, *, environ: Mapping[str, str] | None = None) -> Registry:
    """Load every installed plugin into ``registry`` (a new one by default) and return it."""
    env = os.environ if environ is None else environ
    strict = is_strict(env)
    registry = Registry() if registry is None else registry
    for ep in _entry_points():
        dist_name = ep.dist.name if ep.dist is not None else ep.name
        dist_version = ep.dist.version if ep.dist is not None else "0"
        blocked = _blocked_reason(ep.name, dist_name, env)
        if blocked:
            registry.record(PluginRecord(ep.name, dist_name, dist_version, ep.value, status=BLOCKED, reason=blocked))
            continue
        try:
            with plugin_output_to_stderr():
                plugin = ep.load()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # sys.exit() at import included: that plugin fails, not the host
            reason = f"importing {ep.value} failed: {describe(exc)}"
            registry.record(PluginRecord(ep.name, dist_name, dist_version, ep.value, status=FAILED, reason=reason))
            if strict:
                raise PluginError(f"plugin {ep.name!r} ({dist_name} {dist_version}): {reason}") from exc
            continue
        with plugin_output_to_stderr():
            registry.add_plugin(
                plugin, name=ep.name, distribution=dist_name, version=dist_version, entry_point=ep.value, strict=strict
            )
    return registry


@contextlib.contextmanager
def plugin_output_to_stderr() -> Iterator[None]:
    """What plugin code prints goes to stderr: stdout stays the command's (``plugins --json``)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


_registry: Registry | None = None
_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, discovering the installed plugins on first call."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = discover()
        return _registry


def reset_registry(registry: Registry | None = None) -> None:
    """Forget (or replace) the process-wide registry; the next ``get_registry()`` rediscovers."""
    global _registry
    with _lock:
        _registry = registry
