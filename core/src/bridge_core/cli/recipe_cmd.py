"""``bridgectl recipe show NAME [key=value ...]``: the recipe's resolved config (imports no torch)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print the resolved recipe as JSON")
    show.add_argument("name", help="recipe name (see 'bridgectl recipes')")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.iters=20")


def run(args: argparse.Namespace) -> int:
    from bridge_core.training.recipe import load_recipe

    recipe = load_recipe(args.name).with_overrides(args.overrides)
    recipe.config.check()
    print(json.dumps(recipe.to_dict(), indent=2))
    return 0
