"""An architecture's tensor names as a table: one row per HF tensor (or fused group) its bridge maps.

Each row: the Megatron name pattern, the other Megatron spellings of the same HF tensors (the local layer
spec's and Transformer Engine's norms, per-expert and grouped experts), the HF names as a checkpoint's
index lists them (``*``: the layer, then the expert index), the mapping class and how tensor parallel
splits the Megatron tensor. The model is built on the ``meta`` device with the local layer spec, which
says which mappings this config uses and how megatron-core splits what an ``AutoMapping`` reads.
``bridgectl plugins --mappings ARCH`` prints it; ``scripts/gen_mapping_docs.py`` writes the family pages.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from bridge_core.errors import CheckpointError, ConfigError, PluginError
from bridge_core.plugins.discovery import get_registry
from bridge_core.plugins.registry import BridgeRegistration, describe

if TYPE_CHECKING:  # the mappings import torch; this module is imported before it loads
    from bridge_core.mappings import MegatronParamMapping

COLUMNS = ("MEGATRON", "HF", "KIND", "TP")


@dataclass(frozen=True)
class MappingRow:
    """One HF tensor group and the mapping(s) that read it (``used``: the model of this config has one)."""

    megatron: str
    hf: tuple[str, ...]
    kind: str
    tp: str
    also: tuple[str, ...] = ()
    used: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "megatron": self.megatron,
            "also": list(self.also),
            "hf": list(self.hf),
            "kind": self.kind,
            "tp": self.tp,
            "used": self.used,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> MappingRow:
        return cls(doc["megatron"], tuple(doc["hf"]), doc["kind"], doc["tp"], tuple(doc["also"]), doc["used"])


@dataclass(frozen=True)
class MappingTable:
    """The rows of ``architecture``'s bridge for one config (``source`` says which)."""

    architecture: str
    bridge: str
    source: str
    rows: tuple[MappingRow, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "bridge": self.bridge,
            "source": self.source,
            "rows": [r.as_dict() for r in self.rows],
        }


def tp_split(mapping: MegatronParamMapping, dims: Collection[int | None]) -> str:
    """``vocab``, ``dim N`` or ``replicated`` (``dims``: the split dims of the parameters bound to it)."""
    from bridge_core.mappings import VocabParallelMapping

    if isinstance(mapping, VocabParallelMapping):
        return "vocab"
    if getattr(mapping, "infer_tp_dim", False):  # AutoMapping: whatever megatron-core marks
        if len(set(dims)) != 1:
            return "auto"
        (dim,) = set(dims)
    else:
        dim = mapping.tp_dim
    if dim is None:
        return "replicated"
    return f"dim {dim}" + (" (expert TP)" if ".experts." in mapping.megatron_param else "")


def rows_of(mappings: list[MegatronParamMapping], params: list[tuple[str, int | None]]) -> list[MappingRow]:
    """Mappings grouped by the HF names they read, in the bridge's order; ``params``: ``(name, split dim)``."""
    from bridge_core.mappings.base import compile_pattern

    regexes = [compile_pattern(m.megatron_param) for m in mappings]
    dims: list[list[int | None]] = [[] for _ in mappings]
    for name, dim in params:
        hit = next((i for i, r in enumerate(regexes) if r.match(name)), None)
        if hit is not None:
            dims[hit].append(dim)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, m in enumerate(mappings):
        groups.setdefault(m.hf_names, []).append(i)
    rows = []
    for hf, members in groups.items():
        used = [i for i in members if dims[i]]
        first = (used or members)[0]
        mapping = mappings[first]
        bound = [d for i in members for d in dims[i]]
        also = tuple(mappings[i].megatron_param for i in members if i != first)
        rows.append(
            MappingRow(mapping.megatron_param, hf, type(mapping).__name__, tp_split(mapping, bound), also, bool(used))
        )
    return rows


def meta_rows(bridge: Any, provider: Any, hf_names: Collection[str] | None) -> list[MappingRow]:
    """The rows of ``bridge`` (a ``MegatronModelBridge``) for ``provider``'s model, built on ``meta``."""
    from bridge_core.conversion.layout_plan import meta_model

    if provider.transformer_layer_spec == "auto":  # the same table with or without Transformer Engine
        provider.transformer_layer_spec = "local"
    params = [(p.global_name, p.tp_dim) for p in meta_model(provider)[1]]
    bridge.select_hf_layout(provider, None if hf_names is None else frozenset(hf_names))
    return rows_of(list(bridge.mapping_registry()), params)


# -- configs --------------------------------------------------------------------------------------
def plugin_tests_dir(dist_name: str) -> Path | None:
    """``tests/`` of a distribution installed from a local folder (its PEP 610 ``direct_url.json``)."""
    try:
        text = distribution(dist_name).read_text("direct_url.json")
    except PackageNotFoundError:
        return None
    info = json.loads(text) if text else {}
    url = urlparse(str(info.get("url", "")))
    if "dir_info" not in info or url.scheme != "file":
        return None
    tests = Path(unquote(url.path)) / "tests"
    return tests if tests.is_dir() else None


@contextmanager
def _on_path(folder: Path) -> Iterator[None]:
    sys.path.insert(0, str(folder))  # the conformance modules import their helpers by bare name
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def conformance_toys(tests: Path) -> Iterator[tuple[str, Any, Path]]:
    """``(name, ToyModel, file)`` of every ``BridgeConformance`` class in ``tests/test_*conformance*.py``."""
    from bridge_core.testing.conformance import BridgeConformance

    for path in sorted(tests.glob("test_*conformance*.py")):
        name = "_mapping_toys_" + re.sub(r"\W", "_", f"{tests.parent.name}_{path.stem}")
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        with _on_path(tests):
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                raise PluginError(f"{path}: cannot read its conformance toys ({describe(exc)})") from exc
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, BridgeConformance) and obj.__module__ == name:
                yield from ((toy_name, toy, path) for toy_name, toy in obj.toys.items())


def toy_config(reg: BridgeRegistration, tests: Path | None = None) -> tuple[Any, str]:
    """The HF config of the first conformance toy of ``reg.architecture`` in ``tests`` (default: the
    installed plugin's source folder), and a line naming it."""
    from transformers import AutoConfig

    arch = reg.architecture
    tests = tests or plugin_tests_dir(reg.distribution)
    if tests is None:
        raise PluginError(
            f"{arch}: {reg.distribution} {reg.version} is not installed from a source folder with tests/, so "
            "its conformance toys are not here; pass --hf-model DIR (a folder with config.json)"
        )
    for name, toy, path in conformance_toys(tests):
        if toy.architecture == arch:
            values = {k: v for k, v in toy.config.items() if k != "model_type"}
            config = AutoConfig.for_model(toy.model_type, architectures=[arch], **values)
            return config, f"toy config {name!r} ({tests.parent.name}/{path.relative_to(tests.parent)})"
    raise PluginError(f"{arch}: no conformance toy in {tests}/test_*conformance*.py; pass --hf-model DIR")


def check_hf_model(architecture: str, folder: Path) -> None:
    """Refuse, in one line and before torch loads, a folder that is not an HF folder of ``architecture``."""
    from bridge_core.checkpoints.hf_checkpoint import architecture_of, read_config_json

    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such folder (expected an HF model folder with config.json)")
    found = architecture_of(read_config_json(folder), str(folder / "config.json"))
    if found != architecture:
        raise ConfigError(f"{folder / 'config.json'}: architecture {found}, not {architecture}")


def checkpoint_names(folder: Path) -> frozenset[str] | None:
    """The tensor names of an HF folder (its index, else its safetensors headers); None without weights."""
    from bridge_core.checkpoints.safetensors_io import INDEX_NAME, SafetensorsCheckpoint, read_weight_map

    if (folder / INDEX_NAME).exists():
        return frozenset(read_weight_map(folder))
    return frozenset(SafetensorsCheckpoint(folder).meta) if any(folder.glob("*.safetensors")) else None


def mapping_table(architecture: str, hf_model: Path | None = None, tests: Path | None = None) -> MappingTable:
    """``architecture``'s table for ``hf_model``'s config.json (its tensor names pick the layout where a
    bridge has several), or for the plugin's conformance toy (found in ``tests`` if given)."""
    from bridge_core.conversion.auto_bridge import AutoBridge

    reg = get_registry().bridge_for(architecture)
    names: frozenset[str] | None = None
    if hf_model is not None:
        check_hf_model(architecture, hf_model)
        auto = AutoBridge.from_hf_pretrained(hf_model)
        names = checkpoint_names(hf_model)
        source = f"{hf_model / 'config.json'}" + (", layout from its tensor names" if names else "")
    else:
        config, source = toy_config(reg, tests)
        auto = AutoBridge.from_hf_config(config)
    rows = meta_rows(auto.bridge, auto.to_megatron_provider(), names)
    owner = f"{type(auto.bridge).__name__} ({reg.distribution} {reg.version})"
    return MappingTable(architecture, owner, source, tuple(rows))


# -- text -----------------------------------------------------------------------------------------
def _cells(row: MappingRow) -> list[list[str]]:
    """A row's columns; its other Megatron spellings go below its last HF name."""
    spellings = [row.megatron, *[""] * (len(row.hf) - 1), *(f"  also {a}" for a in row.also)]
    return [spellings, list(row.hf), [row.kind], [row.tp]]


def format_table(table: MappingTable) -> str:
    """The table as aligned text, a row's other HF names and Megatron spellings on lines of their own."""
    rows = [_cells(r) for r in table.rows]
    widths = [max(len(c) for c in [name, *(line for r in rows for line in r[i])]) for i, name in enumerate(COLUMNS)]

    def lines(cells: list[list[str]]) -> list[str]:
        depth = max(len(c) for c in cells)
        padded = [c + [""] * (depth - len(c)) for c in cells]
        return ["  ".join(f"{col[j]:<{w}}" for col, w in zip(padded, widths)).rstrip() for j in range(depth)]

    out = [
        f"{table.architecture}: {table.bridge}, {table.source}",
        "(* is the layer index, then the expert index; TP: how tensor parallel splits the Megatron tensor)",
    ]
    out += lines([[c] for c in COLUMNS])
    for row, cells in zip(table.rows, rows):
        if row.used:
            out += lines(cells)
    unused = [cells for row, cells in zip(table.rows, rows) if not row.used]
    if unused:
        out.append("not used by this config (its model has no such parameter):")
        for cells in unused:
            out += lines(cells)
    return "\n".join(out)
