"""Build hook: ship the plugin template inside bridge-core's wheel and sdist.

The template's one source is the repository's ``cookiecutter-plugin/`` folder (next to ``core/``).
Building from the checkout, it is copied to ``bridge_core/_template`` in the wheel and to
``src/bridge_core/_template`` in the sdist, so a wheel built from that sdist carries it too (the folder
is then already inside the package). Editable installs get nothing copied: ``bridge_core.authoring.scaffold``
finds the checkout's folder instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

TEMPLATE = Path(__file__).resolve().parent.parent / "cookiecutter-plugin"


class PluginTemplateHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name == "wheel" and version == "editable":
            return
        if not (TEMPLATE / "cookiecutter.json").is_file():  # building from an sdist, which holds it already
            return
        target = "bridge_core/_template" if self.target_name == "wheel" else "src/bridge_core/_template"
        build_data["force_include"][str(TEMPLATE)] = target
