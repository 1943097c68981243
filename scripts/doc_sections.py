"""What the scripts that write generated sections of docs/ share: the family page, the swap of a marked
section, and the write-or ``--check`` loop."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def family_page(family: str) -> Path:
    return ROOT / "docs" / "families" / f"{family.replace('_', '-')}.md"  # gpt_oss -> gpt-oss.md


def replace_marked(text: str, begin: str, end: str, block: str) -> str:
    """``text`` with what lies from ``begin`` to ``end`` (the markers included) replaced by ``block``."""
    start, stop = text.index(begin), text.index(end) + len(end)
    return text[:start] + block + text[stop:]


def write_or_check(rendered: dict[Path, str], check: bool, what: str, script: str) -> int:
    """Write the files whose text differs from ``rendered``; with ``check`` only name them (exit 1 if any)."""
    changed = [path for path, text in rendered.items() if path.read_text() != text]
    for path in changed:
        if check:
            print(f"{path.relative_to(ROOT)}: {what} out of date; run python {script}")
        else:
            path.write_text(rendered[path])
            print(f"wrote {path.relative_to(ROOT)}")
    return 1 if check and changed else 0
