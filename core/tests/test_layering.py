"""The package's layering, read from its source (AST; nothing is imported): which layer may import which.

"Top level" is a module's body outside functions (``if TYPE_CHECKING:`` blocks excluded): what runs when
the module is imported. "Anywhere" also counts imports inside functions.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

import bridge_core

PACKAGE = Path(bridge_core.__file__).parent
HEAVY = ("torch", "megatron", "transformers", "safetensors", "gguf", "peft", "accelerate", "transformer_engine")
PLAN_MODULES = (
    "bridge_core.conversion.plan",
    "bridge_core.conversion.tasks",
    "bridge_core.conversion.import_plan",
    "bridge_core.conversion.export_plan",
    "bridge_core.conversion.layout_plan",
)
DISTRIBUTED = ("torch.distributed", "megatron.core.parallel_state")


def _name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


# The cookiecutter template an installed wheel carries (``_template/``) is package data, not modules.
MODULES = {_name(p): p for p in PACKAGE.rglob("*.py") if "_template" not in p.relative_to(PACKAGE).parts}


def _walk(node: ast.AST, in_function: bool, out: list[tuple[str, bool]]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            continue
        nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(child, ast.Import):
            out += [(a.name, nested) for a in child.names]
        elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
            out.append((child.module, nested))
            out += [(f"{child.module}.{a.name}", nested) for a in child.names if child.module.startswith("bridge_core")]
        _walk(child, nested, out)


@cache
def imports(module: str) -> tuple[tuple[str, bool], ...]:
    """(imported name, inside a function) for every import statement of ``module``."""
    out: list[tuple[str, bool]] = []
    _walk(ast.parse(MODULES[module].read_text(encoding="utf-8")), False, out)
    return tuple(out)


def _module_of(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def top_level_closure(module: str, packages: bool = True) -> set[str]:
    """``module`` and the bridge_core modules importing it imports at top level, transitively (with the
    packages holding them, whose ``__init__`` runs first, unless ``packages`` is false)."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        parts = current.split(".")
        if packages:
            todo += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES]
        todo += [m for name, lazy in imports(current) if not lazy and (m := _module_of(name))]
    return seen


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _in(package: str) -> list[str]:
    return sorted(m for m in MODULES if _under(m, (f"bridge_core.{package}",)))


def test_the_tree_is_read():
    assert len(MODULES) > 100 and "bridge_core.plugins.registry" in MODULES
    assert ("torch", False) in imports("bridge_core.conversion.params")
    assert "bridge_core.plugins.registry" in top_level_closure("bridge_core.plugins.discovery")


@pytest.mark.parametrize("module", ["bridge_core", "bridge_core._moved", *_in("plugins")])
def test_the_plugin_system_imports_no_torch_anywhere(module):
    # Anywhere, functions included: discovery and the registry must stay cheap for `bridgectl plugins`.
    heavy = [name for name, _ in imports(module) if _under(name, HEAVY)]
    assert not heavy, f"{module} imports {heavy}"
    for dep in top_level_closure(module):
        assert not [n for n, lazy in imports(dep) if not lazy and _under(n, HEAVY)], f"{module} -> {dep} imports torch"


@pytest.mark.parametrize("module", PLAN_MODULES)
def test_the_conversion_plan_needs_no_process_group(module):
    # Top level, transitively: planning imports no torch.distributed (the layout probe may, in a function).
    for dep in top_level_closure(module):
        found = [n for n, lazy in imports(dep) if not lazy and _under(n, DISTRIBUTED)]
        assert not found, f"{module} -> {dep} imports {found} at top level"
    assert not [n for n, _ in imports(module) if _under(n, DISTRIBUTED)], f"{module} imports torch.distributed"


@pytest.mark.parametrize("module", _in("checkpoints"))
def test_checkpoint_io_imports_no_conversion_engine(module):
    # Anywhere: the I/O layer reads and writes files; the engine builds on it, never the reverse.
    found = [n for n, _ in imports(module) if _under(n, ("bridge_core.conversion", "bridge_core.cli"))]
    assert not found, f"{module} imports {found}"


@pytest.mark.parametrize("module", [m for m in MODULES if not _under(m, ("bridge_core.cli", "bridge_core.testing"))])
def test_only_the_command_line_imports_the_command_line(module):
    # Anywhere. testing/ is exempt: its recipe check runs `bridgectl train` end to end, as a user does.
    found = [n for n, _ in imports(module) if _under(n, ("bridge_core.cli",))]
    assert not found, f"{module} imports {found}"


@pytest.mark.parametrize("module", _in("cli"))
def test_the_command_line_imports_nothing_heavy_at_top_level(module):
    # Top level, transitively: parsing arguments, --help and argument errors never wait for torch.
    for dep in top_level_closure(module):
        found = [n for n, lazy in imports(dep) if not lazy and _under(n, HEAVY)]
        assert not found, f"{module} -> {dep} imports {found} at top level"


def test_verify_leaves_the_work_to_the_library():
    # Anywhere: the command parses and prints; conversion/verify loads, exports and compares.
    assert not [n for n, _ in imports("bridge_core.cli.verify_cmd") if _under(n, HEAVY)]
    assert any(n == "bridge_core.conversion.verify" for n, _ in imports("bridge_core.cli.verify_cmd"))


@pytest.mark.parametrize("module", _in("model") + _in("runtime"))
def test_the_model_contract_and_runtime_import_no_engine_or_io(module):
    found = [n for n, _ in imports(module) if _under(n, ("bridge_core.conversion", "bridge_core.checkpoints"))]
    assert not found, f"{module} imports {found}"


def test_discovery_fills_the_registry_and_the_registry_knows_no_discovery():
    assert not [n for n, _ in imports("bridge_core.plugins.registry") if _under(n, ("bridge_core.plugins.discovery",))]
    assert any(n == "bridge_core.plugins.registry" for n, lazy in imports("bridge_core.plugins.discovery") if not lazy)


def test_no_import_cycle_at_top_level():
    for module in MODULES:
        for name, lazy in imports(module):
            dep = _module_of(name)
            if not lazy and dep and dep != module and not module.startswith(dep + "."):
                assert module not in top_level_closure(dep, packages=False), (
                    f"{module} <-> {dep} import each other at top level"
                )


def runtime_edges(modules: list[str]) -> dict[str, list[str]]:
    """Which of ``modules`` each one imports when it runs: top level and inside functions (``if
    TYPE_CHECKING:`` excluded; a package's own ``__init__`` is not an edge)."""
    inside = set(modules)
    return {
        m: sorted({d for n, _ in imports(m) if (d := _module_of(n)) in inside and d != m and not m.startswith(d + ".")})
        for m in modules
    }


def find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """One cycle of the graph ``edges`` as ``[a, b, ..., a]``, or None when every edge goes one way."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for dep in edges.get(node, []):
            if found := visit(dep, [*path, node]):
                return found
        done.add(node)
        return None

    return next((c for node in edges if (c := visit(node, [])) is not None), None)


def test_find_cycle_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None
    assert find_cycle({"x": ["a"], "a": ["b"], "b": ["a"]}) == ["a", "b", "a"]


def test_an_import_inside_a_function_is_an_edge():
    # AutoBridge.load_hf_adapter imports the PEFT loader when called
    assert ("bridge_core.peft.load", True) in imports("bridge_core.conversion.auto_bridge")
    edges = runtime_edges([*_in("conversion"), "bridge_core.peft.load"])
    assert "bridge_core.peft.load" in edges["bridge_core.conversion.auto_bridge"]


def test_no_import_cycle_in_the_conversion_engine_even_inside_functions():
    # An import placed inside a function to dodge a cycle still makes the modules depend on each other.
    cycle = find_cycle(runtime_edges(_in("conversion")))
    assert cycle is None, f"import cycle (imports inside functions included): {' -> '.join(cycle or [])}"
