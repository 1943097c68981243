"""``bridgectl train``: run a recipe on megatron-core (ranks started here, or under torchrun)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe name (see 'bridgectl recipes')")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--hf-model", default=None, help="HF folder to start from (its weights)")
    source.add_argument("--megatron-path", default=None, help="Megatron checkpoint to start from (its weights)")
    parser.add_argument("--nproc", type=int, default=1, help="ranks to start on this machine (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.iters=20")
    parser.parse_args = parser.parse_intermixed_args  # type: ignore[method-assign]  # key=value before and after options


def _world(args: argparse.Namespace) -> int:
    import os

    from bridge_core.cli.launcher import under_launcher
    from bridge_core.errors import ConfigError

    if args.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {args.nproc}")
    return int(os.environ["WORLD_SIZE"]) if under_launcher() else args.nproc


def _precheck(recipe, args: argparse.Namespace, world: int) -> None:
    """Checks that need no torch, before any rank starts: sizes, data, the model's architecture and length."""
    from bridge_core.errors import ConfigError

    config = recipe.config
    config.check(world)
    if config.checkpoint.save is None:
        raise ConfigError(
            "checkpoint.save is not set: pass checkpoint.save=DIR (checkpoints and metrics.jsonl go there)"
        )
    from bridge_core.training.checkpoint import check_save_folder

    check_save_folder(config.checkpoint.save)
    _check_model(recipe, args)
    config.check(world, run=True)  # the data it names
    if config.data.kind == "sft":
        from bridge_core.training.sft_files import read_manifest

        read_manifest(config.data.sft_prefix)


def _check_model(recipe, args: argparse.Namespace) -> None:
    """The recipe's architecture and sequence length against the model's config.json."""
    from bridge_core.checkpoints.hf_checkpoint import architecture_of, read_config_json
    from bridge_core.errors import ConfigError

    config = recipe.config
    hf_config = recipe.model.hf_config
    where = "the recipe's model"
    if args.hf_model is not None:
        folder = Path(args.hf_model)
        hf_config, where = read_config_json(folder), f"--hf-model {folder}"
    elif args.megatron_path is not None:
        from bridge_core.cli.common import precheck_checkpoint

        precheck_checkpoint(args.megatron_path)
        provenance = Path(args.megatron_path) / "provenance.json"
        hf_config = json.loads(provenance.read_text()).get("hf_config") if provenance.is_file() else None
        where = f"--megatron-path {args.megatron_path}"
    elif recipe.model.needs_hf_folder:
        raise ConfigError(
            f"recipe {recipe.name!r} trains an existing model: pass --hf-model HF_FOLDER or --megatron-path CKPT"
        )
    if not hf_config:
        return
    architecture = architecture_of(hf_config, where) if "architectures" in hf_config else recipe.model.architecture
    if architecture != recipe.model.architecture:
        raise ConfigError(
            f"recipe {recipe.name!r} is for {recipe.model.architecture}, but {where} is a {architecture}; "
            "pick a recipe of that family ('bridgectl recipes')"
        )
    positions = hf_config.get("max_position_embeddings")
    if isinstance(positions, int) and config.train.seq_length > positions:
        raise ConfigError(
            f"train.seq_length={config.train.seq_length} is longer than the model's {positions} positions "
            f"(max_position_embeddings of {where})"
        )


def run(args: argparse.Namespace) -> int:
    from bridge_core.cli.common import run_on_ranks
    from bridge_core.training.recipe import load_recipe

    recipe = load_recipe(args.recipe).with_overrides(args.overrides)
    world = _world(args)
    if args.dry_run:
        recipe.config.check(world)
        doc = recipe.to_dict()
        doc["run"] = {
            "world_size": world,
            "data_parallel": recipe.config.parallel.data_parallel(world),
            "hf_model": args.hf_model,
            "megatron_path": args.megatron_path,
        }
        print(json.dumps(doc, indent=2))
        return 0
    _precheck(recipe, args, world)
    code = run_on_ranks(args, world, check_sizes=False)
    if code is not None:
        return code
    from bridge_core.training.trainer import train

    train(recipe, hf_model=args.hf_model, megatron_path=args.megatron_path)
    return 0
