"""``bridgectl plugins``: one row per installed plugin (imports no torch)."""

from __future__ import annotations

import argparse
import json

from bridge_core import CONTRACT_VERSION, __version__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    from bridge_core.registry import get_registry

    registry = get_registry()
    if args.json:
        doc = {
            "core": {"distribution": "bridge-core", "version": __version__, "contract": CONTRACT_VERSION},
            "plugins": [p.as_dict() for p in registry.plugins],
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"bridge-core {__version__} (contract {CONTRACT_VERSION})")
    if not registry.plugins:
        print("no plugins installed (pip install bridge-<family>, e.g. bridge-llama)")
        return 0
    header = ("PLUGIN", "DISTRIBUTION", "VERSION", "CONTRACT", "STATUS")
    rows = [(p.name, p.distribution, p.version, p.contract or "-", p.status) for p in registry.plugins]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header).rstrip())
    for plugin, row in zip(registry.plugins, rows):
        print(fmt.format(*row).rstrip())
        if plugin.architectures:
            print(f"    architectures: {', '.join(plugin.architectures)}")
        for arch, winner in plugin.overridden.items():
            print(f"    overridden: {arch} (served by {winner})")
        if plugin.recipes:
            print(f"    recipes: {', '.join(plugin.recipes)}")
        if plugin.flops:
            print(f"    flops: {', '.join(plugin.flops)}")
        if plugin.reason:
            print(f"    reason: {plugin.reason}")
    return 0
