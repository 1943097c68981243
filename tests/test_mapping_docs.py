"""The "Tensor names" sections of docs/families/*.md are what scripts/gen_mapping_docs.py writes from the
installed plugins of this checkout: changing a bridge's mappings (or its toy) without regenerating them fails
here. Each installed plugin's page is checked (the ecosystem env has llama and qwen, the dev env all)."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("gen_mapping_docs", ROOT / "scripts" / "gen_mapping_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.needs_dists("bridge-llama", "bridge-qwen")
def test_tensor_name_sections_are_current_and_go_stale_when_a_mapping_changes(clean_plugin_env, monkeypatch, capsys):
    gen = _script()
    tables = gen.shipped_tables()
    assert {"llama", "qwen"} <= set(tables)
    assert [t.architecture for t in tables["llama"]] == ["LlamaForCausalLM", "MistralForCausalLM"]
    out_of_date = [str(p.relative_to(ROOT)) for p in gen.stale(tables)]
    assert out_of_date == [], f"{', '.join(out_of_date)}: out of date; run python scripts/gen_mapping_docs.py"
    llama_page = ROOT / "docs" / "families" / "llama.md"
    text = llama_page.read_text()
    qkv = "| `decoder.layers.*.self_attention.linear_qkv.weight` | `model.layers.*.self_attn.q_proj.weight`<br>"
    assert qkv in text
    first = tables["llama"][0]
    fewer = dataclasses.replace(first, rows=first.rows[1:])
    changed = {**tables, "llama": [fewer, *tables["llama"][1:]]}
    assert gen.stale(changed) == [llama_page]
    monkeypatch.setattr(gen, "shipped_tables", lambda: changed)
    assert gen.main(["--check"]) == 1
    assert capsys.readouterr().out == (
        "docs/families/llama.md: tensor names out of date; run python scripts/gen_mapping_docs.py\n"
    )
    assert llama_page.read_text() == text  # --check writes nothing


def test_a_family_page_gets_a_tensor_names_section_once():
    gen = _script()
    section = gen.block([])
    page = "# bridge-x\n\nintro\n\n## Known limitations\n- none\n"
    once = gen.with_section(page, section)
    assert once.index("intro") < once.index(gen.HEADING) < once.index(gen.BEGIN) < once.index("## Known limitations")
    assert gen.with_section(once, section) == once
    assert gen.with_section(once, section.replace("What", "Which")) == once.replace("What", "Which")
    at_end = gen.with_section("# x\n\ntext\n", section)
    assert at_end == f"# x\n\ntext\n\n{gen.HEADING}\n{section}\n\n"
