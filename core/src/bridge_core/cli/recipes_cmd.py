"""``bridgectl recipes``: every installed training recipe (imports no torch, imports no recipe module)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    from bridge_core.training.recipe import recipe_registrations

    regs = recipe_registrations()
    if args.json:
        entries = [
            {
                "name": r.name,
                "family": r.family,
                "kind": r.kind,
                "distribution": r.distribution,
                "version": r.version,
                "recipe": r.recipe,
            }
            for r in regs
        ]
        print(json.dumps({"recipes": entries}, indent=2))
        return 0
    if not regs:
        print("no recipes installed (pip install bridge-<family>, e.g. bridge-llama)")
        return 0
    header = ("RECIPE", "FAMILY", "KIND", "DISTRIBUTION")
    rows = [(r.name, r.family, r.kind, f"{r.distribution} {r.version}") for r in regs]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    for row in [header, *rows]:
        print(fmt.format(*row).rstrip())
    print("show one: bridgectl recipe show NAME [key=value ...]; run one: bridgectl train --recipe NAME")
    return 0
