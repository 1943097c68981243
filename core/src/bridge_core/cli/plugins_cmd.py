"""``bridgectl plugins``: one row per installed plugin (imports no torch); ``--mappings ARCH``: the
architecture's tensor-name table (``bridge_core.authoring.mapping_table``; builds a meta model, so imports torch)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bridge_core import CONTRACT_VERSION, __version__
from bridge_core.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument(
        "--mappings",
        metavar="ARCH",
        help="print ARCH's tensor names: Megatron and HF names, mapping class and TP split of each",
    )
    parser.add_argument(
        "--hf-model",
        metavar="DIR",
        help="with --mappings: the table for this HF folder's config.json (default: the plugin's toy config)",
    )


def _mappings(args: argparse.Namespace) -> int:
    from bridge_core.authoring.mapping_table import check_hf_model, format_table, mapping_table
    from bridge_core.plugins.discovery import get_registry
    from bridge_core.progress import LOADING_LIBRARIES, stage

    # an unknown architecture or a folder without config.json is refused before torch loads
    get_registry().bridge_for(args.mappings)
    folder = Path(args.hf_model) if args.hf_model else None
    if folder is not None:
        check_hf_model(args.mappings, folder)
    if not args.json:  # stdout is the JSON document alone
        stage("plugins", LOADING_LIBRARIES)
    table = mapping_table(args.mappings, folder)
    print(json.dumps(table.as_dict(), indent=2) if args.json else format_table(table))
    return 0


def run(args: argparse.Namespace) -> int:
    from bridge_core.plugins.discovery import get_registry

    if args.mappings:
        return _mappings(args)
    if args.hf_model:
        raise ConfigError("--hf-model goes with --mappings ARCH (the table for that folder's config.json)")
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
