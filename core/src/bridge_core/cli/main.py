"""``bridgectl``: entry point, sub-command table and one-line error reporting.

Sub-command modules are imported only when their command runs (``--help`` of the top level imports
none of them), so ``bridgectl plugins`` never imports torch, megatron or transformers.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bridge_core import CONTRACT_VERSION, __version__
from bridge_core.cli.help_format import DefaultsHelpFormatter
from bridge_core.progress import set_progress

# command -> (module, one-line help). Each module defines add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "plugins": ("bridge_core.cli.plugins_cmd", "list installed plugins, their status and registrations"),
    "import": ("bridge_core.cli.import_cmd", "HF folder or GGUF file -> Megatron-LM torch_dist checkpoint"),
    "export": ("bridge_core.cli.export_cmd", "Megatron checkpoint -> complete HF folder"),
    "generate": ("bridge_core.cli.generate_cmd", "greedy generation with the Megatron model"),
    "verify": ("bridge_core.cli.verify_cmd", "compare a Megatron checkpoint with its HF source (logits, tensors)"),
    "plan": ("bridge_core.cli.plan_cmd", "what each TP/PP/EP rank would hold and read, from config.json alone"),
    "roundtrip": ("bridge_core.cli.roundtrip_cmd", "import, export and compare in one command"),
    "recipes": ("bridge_core.cli.recipes_cmd", "list installed training recipes (name, family, kind, distribution)"),
    "recipe": ("bridge_core.cli.recipe_cmd", "show a recipe's resolved config: recipe show NAME [key=value ...]"),
    "data": (
        "bridge_core.cli.data_cmd",
        "tokenize a JSONL file for training (data prepare)",
    ),
    "peft": ("bridge_core.cli.peft_cmd", "PEFT checkpoint -> HF PEFT adapter (peft export) or merged model (merge)"),
    "train": ("bridge_core.cli.train_cmd", "train a recipe on megatron-core (pretrain or fine-tune; resumable)"),
    "diagnose": ("bridge_core.cli.diagnose_cmd", "name the first module where HF and Megatron activations differ"),
    "new-plugin": ("bridge_core.cli.new_plugin_cmd", "bake a new bridge-<family> plugin from the template"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridgectl", description="Convert models between Hugging Face and Megatron-Core."
    )
    parser.add_argument(
        "--version", action="version", version=f"bridge-core {__version__} (contract {CONTRACT_VERSION})"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    from bridge_core.cli.launcher import stop_signals_interrupt

    caller_group = _process_group() is not None  # a group the caller started stays the caller's
    try:
        with stop_signals_interrupt():  # SIGTERM/SIGHUP unwind like Ctrl-C: outputs clean up
            code = _run(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt as exc:
        code = _interrupted(exc)
    if not caller_group:
        _end_process_group(code)
    if argv is None and "torch" in sys.modules:  # the bridgectl process itself, not a caller's main([...])
        _exit_without_teardown(code)
    return code


def _exit_without_teardown(code: int) -> None:
    """End the process as the interpreter would, less its teardown of torch, megatron-core and
    transformers (1.2 s of every command here): non-daemon threads are joined, atexit handlers (and
    pending ``weakref.finalize`` calls: temporary folders) run, stdout and stderr are flushed."""
    import atexit
    import os
    import threading

    threading._shutdown()  # type: ignore[attr-defined]  # what the interpreter calls first on exit
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = _reader_went_away()
    sys.stderr.flush()
    os._exit(code)


def _run(argv: list[str]) -> int:
    parser = build_parser()
    top, rest = parser.parse_known_args(argv)
    if top.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[top.command][0])
    cmd_parser = argparse.ArgumentParser(
        prog=f"bridgectl {top.command}", description=COMMANDS[top.command][1], formatter_class=DefaultsHelpFormatter
    )
    cmd_parser.add_argument("--debug", action="store_true", default=top.debug, help="show tracebacks of errors")
    cmd_parser.add_argument("--no-progress", action="store_true", help="no progress bars or stage lines")
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(rest)
    if args.no_progress:
        set_progress(False)
    if not args.debug:
        quiet_libraries()
    args.argv = [top.command, *rest] + (["--debug"] if top.debug and "--debug" not in rest else [])
    try:
        code = int(module.run(args) or 0)
        sys.stdout.flush()  # a reader that went away shows here, not in the interpreter's exit
        return code
    except Exception as exc:
        from bridge_core.errors import BridgeError

        if isinstance(exc, BrokenPipeError):
            return _reader_went_away()
        if args.debug:
            raise
        if isinstance(exc, BridgeError):
            _report(f"bridgectl {top.command}: error: {_one_line(str(exc))}")
            return 2
        if isinstance(exc, OSError) and exc.filename is not None:  # the machine's answer about a path
            _report(f"bridgectl {top.command}: error: {exc.filename}: {_one_line(exc.strerror or str(exc))}")
            return 2
        _report(
            f"bridgectl {top.command}: internal error: {type(exc).__name__}: {_one_line(str(exc))} "
            "(rerun with --debug for the traceback)"
        )
        return 1


def _reader_went_away() -> int:
    """Output piped into a reader that stopped (``bridgectl plugins | head``): end quietly like a Unix tool
    killed by SIGPIPE (exit 141); the rest of the output goes to /dev/null, so exit's flush cannot fail."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + 13


def _interrupted(exc: KeyboardInterrupt) -> int:
    """Ctrl-C (or SIGTERM/SIGHUP): one line, exit 128 + the signal; a launched rank leaves the line to its launcher."""
    import signal

    from bridge_core.cli.launcher import is_launched_rank

    signum = getattr(exc, "signum", signal.SIGINT)
    if not is_launched_rank():
        how = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
        print(f"bridgectl: interrupted{how}", file=sys.stderr)
    return 128 + signum


def _end_process_group(code: int) -> None:
    """Stop the process group this command used before the interpreter exits.

    Exiting with a live gloo group can abort in its worker threads ("terminate called without an
    active exception", exit -6) after the work is done. On success every rank destroys it; a failed
    rank process exits at once instead, as peers may still wait in a collective it will never join.
    """
    import os

    dist = _process_group()
    if dist is None:
        return
    if code == 0:
        parallel_state = sys.modules.get("megatron.core.parallel_state")
        if parallel_state is not None:
            parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
    elif "WORLD_SIZE" in os.environ:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _process_group():
    """``torch.distributed`` if it has an initialised group, else None (never imports torch)."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def quiet_libraries() -> None:
    """Keep library warnings (megatron-core's "Apex is not installed" ...) off the user's terminal."""
    import logging
    import os
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # library bars; bridge_core.progress shows the GGUF dequantization
    logging.getLogger("megatron").setLevel(logging.ERROR)
    # a CUDA build of torch with the GPUs hidden (CUDA_VISIBLE_DEVICES=""): "No CUDA runtime is found"
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def _report(line: str) -> None:
    """Print the one-line error; rank processes also leave it where their launcher looks."""
    import os

    print(line, file=sys.stderr)
    path = os.environ.get("BRIDGECTL_ERROR_FILE")
    if path:
        with open(path, "w") as f:
            f.write(line + "\n")


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
