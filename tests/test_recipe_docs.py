"""The recipe tables of docs/training.md and docs/families/*.md are what scripts/gen_recipe_docs.py
writes from the installed registrations: adding, removing or resizing a recipe without regenerating
them fails here."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = (
    "bridge-deepseek",
    "bridge-gemma",
    "bridge-gpt-oss",
    "bridge-llama",
    "bridge-mixtral",
    "bridge-olmo",
    "bridge-phi",
    "bridge-qwen",
)


def _script():
    spec = importlib.util.spec_from_file_location("gen_recipe_docs", ROOT / "scripts" / "gen_recipe_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.needs_dists(*PLUGINS)
def test_recipe_tables_are_current_and_go_stale_when_a_recipe_changes(clean_plugin_env):
    gen = _script()
    recipes = gen.shipped_recipes()
    assert {r.family for r in recipes} == {
        "deepseek", "gemma", "gpt_oss", "llama", "mixtral", "olmo", "phi", "qwen"
    }
    assert gen.stale(recipes) == [], "recipe tables out of date: run python scripts/gen_recipe_docs.py"
    training, qwen_page = ROOT / "docs" / "training.md", ROOT / "docs" / "families" / "qwen.md"
    assert (
        "| `qwen3_235b_a22b_pretrain` | Qwen3-235B-A22B (Qwen/Qwen3-235B-A22B) | pretrain | 256 | 4 | 16 | - | 8 |"
        in (training.read_text())
    )
    (base,) = [r for r in recipes if r.name == "qwen3_8b_pretrain"]
    added = dataclasses.replace(base, name="qwen3_9b_pretrain")
    assert gen.stale([*recipes, added]) == [training, qwen_page]
    resized = dataclasses.replace(base, sized_for=dataclasses.replace(base.sized_for, gpus=16))
    assert gen.stale([resized if r is base else r for r in recipes]) == [training, qwen_page]


def test_a_family_page_gets_a_training_section_once():
    gen = _script()
    block = gen.table([])
    page = "# bridge-x\n\nintro\n\n## Known limitations\n- none\n"
    once = gen.with_training_section(page, block)
    assert once.index("## Training") < once.index(gen.BEGIN) < once.index("## Known limitations")
    assert gen.with_training_section(once, block) == once
    kept = gen.with_training_section("# x\n\n## Training\nSet `core_attention`.\n\n## Tested\n", block)
    assert kept.index(gen.END) < kept.index("Set `core_attention`.") < kept.index("## Tested")
