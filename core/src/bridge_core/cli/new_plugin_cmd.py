"""``bridgectl new-plugin``: bake a new ``bridge-<family>`` plugin from bridge-core's template.

With ``--from-config`` the inputs are pre-filled from a model's config.json, and the command reports
what the plugin will need: quantized weights to dequantize, config keys no installed bridge maps,
tensors the stock decoder mappings do not place. Prompts for the inputs when stdin is a terminal,
unless ``--no-input``. Needs cookiecutter (``pip install 'bridge-core[template]'``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from bridge_core import __version__
from bridge_core.errors import BridgeError

SHOWN_VALUE = 70


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from-config",
        metavar="PATH",
        help="a model's config.json (or its folder): pre-fills the inputs and reports what the plugin needs",
    )
    parser.add_argument("--output-dir", default=".", help="folder to create the plugin in (default: here)")
    parser.add_argument(
        "--no-input", action="store_true", help="do not prompt (the default when stdin is not a terminal)"
    )
    parser.add_argument("--family", help="family name: distribution bridge-<family>, module bridge_<family>")
    parser.add_argument("--architecture", help="HF architecture class name(s), comma-separated")
    parser.add_argument("--model-type", help="HF model_type")
    parser.add_argument("--kind", choices=("LLM", "VLM"), help="language or vision-language model")
    parser.add_argument("--author", help="author's name")
    parser.add_argument("--author-email", help="author's e-mail")
    parser.add_argument("--overwrite", action="store_true", help="write into an existing plugin folder")
    parser.add_argument("--template", help="a template folder to bake instead of the one bridge-core ships")


def run(args: argparse.Namespace) -> int:
    from bridge_core.authoring import scaffold

    if importlib.util.find_spec("cookiecutter") is None:
        raise BridgeError(f"cookiecutter is not installed: {scaffold.INSTALL_TEMPLATE}")
    template = Path(args.template) if args.template else scaffold.template_dir()
    if not (template / "cookiecutter.json").is_file():
        raise BridgeError(f"{template}: not a cookiecutter template (no cookiecutter.json)")

    context: dict[str, str] = {}
    if args.from_config:
        report = scaffold.analyze_config(args.from_config)
        print_report(report)
        context.update(report.context())
    overrides = {
        "family": args.family,
        "architectures": args.architecture,
        "model_type": args.model_type,
        "kind": args.kind,
        "author": args.author,
        "author_email": args.author_email,
    }
    context.update({k: v.strip() for k, v in overrides.items() if v is not None})
    major, minor = __version__.split(".")[:2]
    context["__core_version"] = f"{major}.{minor}"

    interactive = not args.no_input and sys.stdin.isatty()
    if not interactive:
        problems = scaffold.template_problems(_with_defaults(context, template), template)
        if problems:
            raise BridgeError("the template refuses these inputs: " + "; ".join(problems))
    path = bake(template, context, Path(args.output_dir), no_input=not interactive, overwrite=args.overwrite)
    print(f"new-plugin: created {path}")
    print(f"next: cd {path} && pip install -e '.[test]' && pytest    (see its README.md)")
    return 0


def _with_defaults(context: dict[str, str], template: Path) -> dict[str, Any]:
    """``context`` completed with the template's plain defaults (what a bake without prompts uses)."""
    defaults = json.loads((template / "cookiecutter.json").read_text())
    full: dict[str, Any] = {}
    for key, value in defaults.items():
        if key.startswith("_"):
            continue
        full[key] = value[0] if isinstance(value, list) else value
    full.update(context)
    if "{{" in str(full.get("model_type", "")):
        full["model_type"] = full.get("family", "")
    return full


def bake(template: Path, context: dict[str, str], output_dir: Path, *, no_input: bool, overwrite: bool) -> Path:
    """Run cookiecutter on ``template``; the path of the new plugin folder."""
    import tempfile

    from cookiecutter.exceptions import CookiecutterException, FailedHookException, OutputDirExistsException
    from cookiecutter.main import cookiecutter

    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bridgectl-new-plugin-") as tmp:
        settings = {"replay_dir": str(Path(tmp) / "replay"), "cookiecutters_dir": str(Path(tmp) / "templates")}
        try:
            return Path(
                cookiecutter(
                    str(template),
                    no_input=no_input,
                    extra_context=context,
                    output_dir=str(output_dir),
                    overwrite_if_exists=overwrite,
                    default_config=settings,
                )
            )
        except OutputDirExistsException as exc:
            raise BridgeError(f"{str(exc).removeprefix('Error: ')}; pass --overwrite to write into it") from None
        except FailedHookException as exc:
            raise BridgeError(f"the template refused these inputs ({exc}); see the errors above") from None
        except CookiecutterException as exc:
            raise BridgeError(f"baking {template} failed: {exc}") from None


def print_report(report: Any) -> None:
    """What the config says, on stdout; quantization warnings on stderr."""
    archs = ", ".join(report.architectures) or "no architectures"
    print(f"new-plugin: read {report.path}: {archs} (model_type {report.model_type or '?'}, {report.kind})")
    if report.kind == "VLM":
        print(
            "  a vision-language model (text_config + vision_config): the baked bridge is a placeholder that "
            "refuses conversion and lists what a VLM bridge must add"
        )
    for arch in report.architectures:
        if arch in report.served:
            print(
                f"  {arch} is already served by {report.served[arch]}; a second plugin for it must register "
                "with override=True (in plugin.py)"
            )
    if report.quantization:
        print(
            f"warning: quantized weights: {'; '.join(report.quantization)}. The engine refuses them unless the "
            "bridge dequantizes: set dequantizes_hf_weights = True and dequantize in maybe_modify_loaded_hf_weight "
            "(bridge_core.model.quantization.dequantize_fp8_blockwise), or convert the unquantized checkpoint",
            file=sys.stderr,
        )
    if report.unmapped:
        print(
            f"config keys no installed bridge maps ({len(report.unmapped)}): each needs a CONFIG_MAPPING entry, "
            "a SUPPORTED_HF_CONFIG value, a HANDLED_HF_CONFIG translation, or new modeling code:"
        )
        for key, value in report.unmapped.items():
            shown = json.dumps(value)
            print(f"  {key} = {shown if len(shown) <= SHOWN_VALUE else shown[: SHOWN_VALUE - 3] + '...'}")
    else:
        print("config keys: every key is mapped by an installed bridge or the stock decoder")
    if report.refused:
        print(f"settings the stock decoder refuses ({len(report.refused)}): the baked bridge must translate them:")
        for key, text in report.refused.items():
            print(f"  {key} = {text}")
    if report.uncovered_tensors:
        print(
            f"tensors the stock decoder mappings do not place ({len(report.uncovered_tensors)}; * = layer): "
            "each needs a mapping in bridge.py, or modeling code for a new block:"
        )
        for name in report.uncovered_tensors:
            print(f"  {name}")
    for note in report.notes:
        print(f"note: {note}")
