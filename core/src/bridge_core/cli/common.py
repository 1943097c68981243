"""Arguments and plumbing shared by the conversion commands (``import``, ``export``, ...)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from bridge_core.errors import CheckpointError, ConfigError
from bridge_core.runtime.parallelism import Parallelism

DTYPES = ("bfloat16", "float16", "float32")


def add_parallel_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("parallelism (ranks are started for you when more than one is needed)")
    group.add_argument("--tp", type=int, default=1, help="tensor model parallel size")
    group.add_argument("--pp", type=int, default=1, help="pipeline model parallel size")
    group.add_argument("--ep", type=int, default=1, help="expert model parallel size")
    group.add_argument("--etp", type=int, default=None, help="expert tensor parallel size (default: --tp)")


def add_stream_args(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_argument_group("streaming (the default: no model is built, memory stays flat at any size)")
    group.add_argument(
        "--workers", type=positive_int, default=1, help="processes that convert a share of the tensors each"
    )
    group.add_argument(
        "--via-model", action="store_true", help=f"build {what} in memory instead (the rank processes of the layout)"
    )


def positive_int(text: str) -> int:
    """An argparse ``type``: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--torch-dtype", choices=DTYPES, default=None, help="parameter dtype (default: the checkpoint's)"
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="allow models that need remote code")
    add_accept_config_arg(parser)


def add_accept_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--accept-config",
        action="append",
        default=[],
        metavar="KEY",
        help="convert although config.json's KEY is refused (you know it does not change the outputs); repeatable",
    )


def parallelism(args: argparse.Namespace) -> Parallelism:
    for name in ("tp", "pp", "ep", "etp"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name} must be at least 1, got {value}")
    sizes = Parallelism(tp=args.tp, pp=args.pp, ep=args.ep, etp=args.etp)
    _precheck_gguf_source(getattr(args, "hf_model", None), sizes)
    return sizes


def _precheck_gguf_source(source: str | None, sizes: Parallelism) -> None:
    """A GGUF ``--hf-model``'s header against the sizes, before it is dequantized (minutes) into a folder."""
    from bridge_core.checkpoints.gguf_source import is_gguf, resolve_gguf
    from bridge_core.cli.launcher import under_launcher
    from bridge_core.runtime.parallel_checks import precheck_parallel, shape_from_gguf

    if source is None or under_launcher() or not is_gguf(source):
        return
    path = resolve_gguf(source)
    shape = shape_from_gguf(str(path))
    if shape is not None:
        precheck_parallel(shape, str(path), tp=sizes.tp, pp=sizes.pp, ep=sizes.ep)


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite float above zero (``nan``, ``inf``, 0 and negatives are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def replace_arg(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag``'s value replaced (``--flag v`` or ``--flag=v``), or appended."""
    out, i, done = [], 0, False
    while i < len(argv):
        if argv[i] == flag and i + 1 < len(argv):
            out += [flag, value]
            i, done = i + 2, True
            continue
        if argv[i].startswith(flag + "="):
            out.append(f"{flag}={value}")
            i, done = i + 1, True
            continue
        out.append(argv[i])
        i += 1
    return out if done else [*out, flag, value]


def precheck_hf(folder: Path, trust_remote_code: bool = False) -> None:
    """Cheap checks before starting ranks: config.json, architecture, a plugin that serves it."""
    from bridge_core.checkpoints.hf_checkpoint import HFCheckpoint
    from bridge_core.plugins.discovery import get_registry

    hf = HFCheckpoint(folder, trust_remote_code=trust_remote_code)
    get_registry().bridge_for(hf.architecture)


def precheck_checkpoint(path: str) -> None:
    """Cheap checks of a Megatron checkpoint folder before starting ranks."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    if not (folder / "latest_checkpointed_iteration.txt").is_file():
        raise CheckpointError(
            f"{folder / 'latest_checkpointed_iteration.txt'}: missing (not a Megatron checkpoint folder)"
        )


def run_on_ranks(
    args: argparse.Namespace, world: int, hf_folder: Path | None = None, *, check_sizes: bool = True
) -> int | None:
    """Start ``world`` rank processes for this command unless already inside one; None: run here.

    ``check_sizes``: check ``--tp/--pp/--ep/--etp`` against the model's config first (the conversion
    commands); ``train`` checks its recipe's parallel sizes itself.
    """
    from bridge_core.cli.launcher import spawn_ranks, under_launcher

    if under_launcher():
        return None
    if check_sizes:
        precheck_parallel_args(args, hf_folder)
    if world <= 1:
        return None
    argv = list(args.argv)
    if hf_folder is not None:
        argv = replace_arg(argv, "--hf-model", str(hf_folder))
    return spawn_ranks(argv, world)


def precheck_parallel_args(args: argparse.Namespace, hf_folder: Path | None = None) -> None:
    """Refuse ``--tp/--pp/--ep`` that the model's shape rules out, from its JSON config alone.

    The shape comes from ``hf_folder``'s ``config.json`` when the command reads an HF model, else
    from ``--megatron-path``'s ``run_config.json``; nothing heavy is imported and no rank is started.
    """
    from bridge_core.checkpoints.hf_checkpoint import read_config_json, read_json_object
    from bridge_core.runtime.parallel_checks import (
        precheck_parallel,
        shape_from_hf_config,
        shape_from_provider_settings,
    )

    parallel = parallelism(args)
    megatron = getattr(args, "megatron_path", None)
    run_config = Path(megatron) / "run_config.json" if megatron is not None else None
    if hf_folder is not None:
        shape, where = shape_from_hf_config(read_config_json(hf_folder)), hf_folder / "config.json"
    elif run_config is not None and run_config.is_file():
        settings = read_json_object(run_config).get("provider")
        if not isinstance(settings, dict):
            return  # the checkpoint reader names what is wrong with it
        shape, where = shape_from_provider_settings(settings), run_config
    else:
        return
    precheck_parallel(shape, str(where), tp=parallel.tp, pp=parallel.pp, ep=parallel.ep)
