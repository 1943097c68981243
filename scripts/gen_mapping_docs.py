"""Write the "Tensor names" section of each docs/families/<family>.md from the installed plugins of this
checkout's ``plugins/``: per architecture the plugin serves, the table ``bridgectl plugins --mappings ARCH``
prints for the plugin's conformance toy (read from ``plugins/<distribution>/tests``), between marker comments.

    python scripts/gen_mapping_docs.py          # rewrite the sections
    python scripts/gen_mapping_docs.py --check  # exit 1, naming the files, if a section is out of date

A family page without the markers gets a ``## Tensor names`` section before ``## Known limitations``
(else at the end).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from doc_sections import ROOT, family_page, replace_marked, write_or_check

BEGIN, END = "<!-- mappings:begin (scripts/gen_mapping_docs.py writes this section) -->", "<!-- mappings:end -->"
HEADING = "## Tensor names"
INTRO = (
    "What each HF tensor of a checkpoint becomes in Megatron, per architecture (`bridgectl plugins --mappings ARCH`\n"
    "prints the same table; with `--hf-model DIR` the one of your checkpoint, from its config.json and tensor\n"
    "names). `*` is the layer index, then the expert index; *also* lists the other megatron-core spellings of the\n"
    "same HF tensor (Transformer Engine's fused norms, grouped experts). TP is how tensor parallel splits the\n"
    "Megatron tensor: `vocab` is dim 0 of the padded vocabulary, `(expert TP)` the expert tensor-parallel group's\n"
    "split; `QKVMapping` splits by query group, `GatedMLPMapping` gate and up each. The tables are for the\n"
    "plugin's conformance toy: a setting the toy leaves off (biases, q/k norms, tied embeddings) adds or drops rows,\n"
    "and where a bridge reads several HF layouts (experts stacked in one tensor) a checkpoint's tensor names pick one."
)
TABLE_HEADER = "| Megatron | HF | kind | TP |\n| --- | --- | --- | --- |\n"


def shipped_tables() -> dict[str, list[Any]]:
    """Plugin name -> the ``MappingTable`` of each architecture it serves (registration order), for every
    loaded plugin whose distribution is in this checkout's ``plugins/``."""
    from bridge_core.authoring.mapping_table import mapping_table
    from bridge_core.plugins.discovery import get_registry
    from bridge_core.plugins.registry import LOADED

    out: dict[str, list[Any]] = {}
    for record in get_registry().plugins:
        folder = ROOT / "plugins" / record.distribution
        if record.status == LOADED and folder.is_dir():
            out[record.name] = [mapping_table(arch, tests=folder / "tests") for arch in record.architectures]
    return out


def _code(names: Any) -> str:
    return "<br>".join(f"`{n}`" for n in names)


def row(r: Any) -> str:
    megatron = _code([r.megatron]) + "".join(f"<br>also `{a}`" for a in r.also)
    return f"| {megatron} | {_code(r.hf)} | {r.kind} | {r.tp} |\n"


def architecture_block(table: Any) -> str:
    used = [r for r in table.rows if r.used]
    unused = [r for r in table.rows if not r.used]
    text = f"### `{table.architecture}`\nFor the {table.source}:\n\n" + TABLE_HEADER + "".join(row(r) for r in used)
    if unused:
        text += "\nNot used by this config (its model has no such parameter):\n"
        text += "".join(f"- `{r.megatron}` ({r.kind}): {', '.join(f'`{n}`' for n in r.hf)}\n" for r in unused)
    return text


def block(tables: list[Any]) -> str:
    return BEGIN + "\n" + INTRO + "\n\n" + "\n".join(architecture_block(t) for t in tables) + END


def with_section(text: str, section: str) -> str:
    """``text`` (a family page) with ``section`` as its Tensor names section."""
    if BEGIN in text:
        return replace_marked(text, BEGIN, END, section)
    limits = text.find("## Known limitations")
    at = limits if limits >= 0 else len(text)
    sep = "" if at == 0 or text[:at].endswith("\n\n") else "\n" if text[:at].endswith("\n") else "\n\n"
    return text[:at] + f"{sep}{HEADING}\n{section}\n\n" + text[at:]


def rendered(tables: dict[str, list[Any]]) -> dict[Path, str]:
    """What each family page should hold for ``tables``."""
    pages = {family_page(p): t for p, t in tables.items()}
    return {page: with_section(page.read_text(), block(t)) for page, t in pages.items() if page.is_file()}


def stale(tables: dict[str, list[Any]]) -> list[Path]:
    """The family pages whose Tensor names sections differ from ``tables``."""
    return [path for path, text in rendered(tables).items() if path.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a section is out of date; write nothing")
    args = parser.parse_args(argv)
    return write_or_check(rendered(shipped_tables()), args.check, "tensor names", "scripts/gen_mapping_docs.py")


if __name__ == "__main__":
    sys.exit(main())
