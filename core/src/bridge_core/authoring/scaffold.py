"""``bridgectl new-plugin``'s work: find the plugin template, read a model's config.json, bake a plugin.

The template is the repository's ``cookiecutter-plugin/`` folder; bridge-core's wheel carries it as
``bridge_core/_template`` (see ``core/hatch_build.py``), and a development checkout is used in place.
``analyze_config`` reads a ``config.json`` (and the safetensors index or headers next to it, never
the weights) and says what a new plugin will need: the architecture and model_type to pre-fill,
LLM or VLM, quantized weights, and the config keys no installed bridge maps.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge_core.checkpoints.hf_checkpoint import read_json_object
from bridge_core.errors import BridgeError, CheckpointError

INSTALL_TEMPLATE = "pip install 'bridge-core[template]'"
# Config keys the template's own bridge handles on top of the stock DecoderBridge (see its bridge.py).
TEMPLATE_HANDLED_KEYS = frozenset({"sliding_window", "max_window_layers"})
# Tensor-name endings of quantized checkpoints' companions (FP8 block scales and per-tensor scales).
SCALE_SUFFIXES = ("_scale_inv", ".weight_scale", ".input_scale")
FP8_DTYPES = ("F8_E4M3", "F8_E5M2", "F8_E8M0")
MAX_HEADERS = 16


def template_dir() -> Path:
    """The plugin template folder: the packaged copy, else the development checkout's."""
    here = Path(__file__).resolve().parents[1]  # bridge_core/ (this module is bridge_core/authoring/scaffold.py)
    for candidate in (here / "_template", here.parents[2] / "cookiecutter-plugin"):
        if (candidate / "cookiecutter.json").is_file():
            return candidate
    raise BridgeError(
        f"the plugin template is missing from this bridge-core installation ({here / '_template'}); "
        "reinstall bridge-core from its wheel or sdist"
    )


def template_problems(context: dict[str, Any], template: Path | None = None) -> list[str]:
    """What the template's pre-generation hook would refuse in ``context`` (checked before baking)."""
    hook = (template or template_dir()) / "hooks" / "pre_gen_project.py"
    if not hook.is_file():
        return []
    namespace: dict[str, Any] = {"__name__": "_bridge_template_pre_gen", "__file__": str(hook)}
    exec(compile(hook.read_text(), str(hook), "exec"), namespace)  # no __pycache__ next to the template
    return list(namespace["problems"](context))


# -- reading a config.json ----------------------------------------------------------------------
@dataclass
class ConfigReport:
    """What a model's config.json says about the plugin it needs."""

    path: Path
    architectures: list[str]
    model_type: str | None
    kind: str
    family: str | None
    quantization: list[str] = field(default_factory=list)
    unmapped: dict[str, Any] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    served: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    uncovered_tensors: list[str] = field(default_factory=list)

    def context(self) -> dict[str, str]:
        """The template inputs this config pre-fills."""
        out = {"kind": self.kind}
        if self.architectures:
            out["architectures"] = ",".join(self.architectures)
        if self.model_type:
            out["model_type"] = self.model_type
        if self.family:
            out["family"] = self.family
        return out


def read_config(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(config.json path, its contents)`` for a config file or a model folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such config file (give a config.json or a folder holding one)")
    return path, read_json_object(path)


def family_from_model_type(model_type: str | None) -> str | None:
    """A family name for the template from a model_type: ``Qwen2-VL`` -> ``qwen2_vl``."""
    if not model_type:
        return None
    name = re.sub(r"[^a-z0-9]+", "_", model_type.lower()).strip("_")
    if not name:
        return None
    return name if name[0].isalpha() else f"m{name}"


def is_vlm(config: dict[str, Any]) -> bool:
    """A vision-language model: a config with both ``text_config`` and ``vision_config`` sections."""
    return isinstance(config.get("text_config"), dict) and isinstance(config.get("vision_config"), dict)


def quantization_findings(config_path: Path, config: dict[str, Any]) -> list[str]:
    """Signs of quantized weights: a ``quantization_config``, ``*_scale_inv`` tensors, FP8 dtypes."""
    found = []
    for where, section in (("", config), ("text_config.", config.get("text_config") or {})):
        qc = section.get("quantization_config") if isinstance(section, dict) else None
        if qc:
            shown = ("quant_method", "fmt", "weight_block_size", "bits")
            details = ", ".join(f"{k}={qc[k]}" for k in shown if isinstance(qc, dict) and k in qc)
            found.append(f"{where}quantization_config is set ({details or 'see config.json'})")
    names, dtypes = _neighbour_tensors(config_path.parent)
    scales = sorted(n for n in names if n.endswith(SCALE_SUFFIXES))
    if scales:
        found.append(f"{len(scales)} scale tensor(s) next to the weights, e.g. {scales[0]}")
    fp8 = sorted(dtypes & set(FP8_DTYPES))
    if fp8:
        found.append(f"weights stored as {', '.join(fp8)}")
    return found


def _neighbour_tensors(folder: Path) -> tuple[set[str], set[str]]:
    """Tensor names (and dtypes, from up to MAX_HEADERS safetensors headers) in ``folder``."""
    names: set[str] = set()
    dtypes: set[str] = set()
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names |= set(json.loads(index.read_text()).get("weight_map", {}))
        except (ValueError, AttributeError, UnicodeDecodeError):
            pass
    for file in sorted(folder.glob("*.safetensors"))[:MAX_HEADERS]:
        header = _safetensors_header(file)
        for name, meta in header.items():
            if name != "__metadata__" and isinstance(meta, dict):
                names.add(name)
                dtypes.add(str(meta.get("dtype")))
    return names, dtypes


def _safetensors_header(file: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON); {} if unreadable."""
    try:
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:
                return {}
            return json.loads(f.read(length))
    except (OSError, ValueError, struct.error):
        return {}


def known_config_keys(notes: list[str] | None = None) -> tuple[set[str], dict[str, str]]:
    """Config keys some installed bridge (or the template's stock decoder) maps, and who serves what.

    Returns ``(keys, served)``: ``keys`` joins the core's neutral keys, the stock ``DecoderBridge``'s and
    the template's, and every installed bridge's ``CONFIG_MAPPING``, ``HANDLED_HF_CONFIG`` and
    ``SUPPORTED_HF_CONFIG`` keys; ``served`` maps each registered architecture to its distribution.
    Bridges that fail to import are skipped with a line in ``notes``.
    """
    from bridge_core.model.config_translation import NEUTRAL_HF_KEYS
    from bridge_core.model.decoder import DecoderBridge
    from bridge_core.plugins.discovery import get_registry

    keys = set(NEUTRAL_HF_KEYS) | set(TEMPLATE_HANDLED_KEYS) | bridge_keys(DecoderBridge)
    registry = get_registry()
    served = {}
    for arch, reg in sorted(registry.bridges.items()):
        served[arch] = f"{reg.distribution} {reg.version}"
        try:
            keys |= bridge_keys(registry.load_bridge_class(arch))
        except Exception as exc:
            if notes is not None:
                notes.append(f"skipped {reg.bridge} ({reg.distribution}): {' '.join(str(exc).split())[:200]}")
    return keys, served


def bridge_keys(bridge_cls: type) -> set[str]:
    """The HF config keys a bridge class declares it translates or accepts."""
    keys = {hf for hf, _ in getattr(bridge_cls, "CONFIG_MAPPING", [])}
    keys |= set(getattr(bridge_cls, "HANDLED_HF_CONFIG", ()))
    keys |= set(getattr(bridge_cls, "SUPPORTED_HF_CONFIG", {}))
    return keys


def unmapped_keys(config: dict[str, Any], known: set[str]) -> dict[str, Any]:
    """Config entries (``text_config.``/``vision_config.`` ones too) that no known key covers."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in ("text_config", "vision_config") and isinstance(value, dict):
            for sub, sub_value in value.items():
                if key == "vision_config" or sub not in known:
                    out[f"{key}.{sub}"] = sub_value
        elif key not in known:
            out[key] = value
    return dict(sorted(out.items()))


def stock_refusals(config: dict[str, Any]) -> dict[str, str]:
    """Values the stock ``DecoderBridge`` would refuse: ``{key: "value (supported: ...)"}``."""
    from types import SimpleNamespace

    from bridge_core.model.decoder import DecoderBridge

    view = SimpleNamespace(**config)
    out = {}
    for key, check in DecoderBridge.SUPPORTED_HF_CONFIG.items():
        if key not in config:
            continue
        value = config[key]
        try:
            ok = check(value, view) if callable(check) else value == check
        except Exception:
            ok = False
        if not ok:
            wanted = " ".join((check.__doc__ or "").split()) if callable(check) else repr(check)
            out[key] = f"{json.dumps(value)} (the stock decoder supports {wanted})"
    return out


def uncovered_tensors(config: dict[str, Any]) -> list[str] | None:
    """Parameter names of the transformers model (built on the meta device) no stock mapping places.

    Layer numbers become ``*``. None when transformers cannot build the model from this config.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from bridge_core.mappings.base import compile_pattern
    from bridge_core.model.decoder import DecoderBridge

    values = {k: v for k, v in config.items() if k not in ("quantization_config", "auto_map")}
    model_type = values.pop("model_type", None)
    hf_config = AutoConfig.for_model(model_type, **values)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    stock = [compile_pattern(n) for m in DecoderBridge(hf_config).mapping_registry() for n in m.hf_names]
    names = sorted({re.sub(r"\.\d+\.", ".*.", n) for n, _ in model.named_parameters()})
    concrete = {n: n.replace("*", "0") for n in names}
    return [n for n in names if not any(p.match(concrete[n]) for p in stock)]


def analyze_config(path: str | Path, *, probe: bool = True) -> ConfigReport:
    """Read a config.json (or a model folder) and report what a plugin for it needs."""
    config_path, config = read_config(path)
    archs = config.get("architectures")
    archs = [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []
    model_type = config.get("model_type") if isinstance(config.get("model_type"), str) else None
    kind = "VLM" if is_vlm(config) else "LLM"
    report = ConfigReport(config_path, archs, model_type, kind, family_from_model_type(model_type))
    if not archs:
        report.notes.append("config.json has no 'architectures' entry: give --architecture")
    if not model_type:
        report.notes.append("config.json has no 'model_type' entry: give --model-type")
    report.quantization = quantization_findings(config_path, config)
    try:
        known, report.served = known_config_keys(report.notes)
    except ImportError as exc:
        report.notes.append(f"cannot compare with the installed bridges ({exc}): pip install 'bridge-core[torch]'")
        return report
    report.unmapped = unmapped_keys(config, known)
    report.refused = stock_refusals(config["text_config"] if kind == "VLM" else config)
    if "auto_map" in config:
        report.notes.append("config.json names remote code (auto_map): its modeling code is not in transformers")
    elif probe and kind == "LLM" and model_type:
        _probe(report, config)
    return report


def _probe(report: ConfigReport, config: dict[str, Any]) -> None:
    try:
        from transformers import CONFIG_MAPPING
    except ImportError:
        return
    if report.model_type not in CONFIG_MAPPING:
        report.notes.append(
            f"transformers does not know model_type {report.model_type!r}: the baked tests build toy models "
            "with transformers, so the modeling code (or a newer transformers) must come first"
        )
        return
    try:
        found = uncovered_tensors(config)
    except Exception as exc:
        report.notes.append(f"could not build the model on the meta device to list its tensors: {type(exc).__name__}")
        return
    report.uncovered_tensors = found or []
