"""Write the recipe tables of docs/training.md and of each docs/families/<family>.md's Training section
from the installed registrations (the plugins of this checkout), between marker comments.

    python scripts/gen_recipe_docs.py          # rewrite the tables
    python scripts/gen_recipe_docs.py --check  # exit 1, naming the files, if a table is out of date

A family page without the markers gets them: its ``## Training`` section's text is kept below the
table, or a ``## Training`` section is added before ``## Known limitations`` (else at the end).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from doc_sections import ROOT, family_page, replace_marked, write_or_check

BEGIN, END = "<!-- recipes:begin (scripts/gen_recipe_docs.py writes this table) -->", "<!-- recipes:end -->"
HEADER = (
    "| recipe | model | kind | GPUs | TP | PP | VPP | EP | seq | GBS / MBS |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
)
TRAINING_INTRO = (
    "Recipes of this family (`bridgectl recipes`; `bridgectl recipe show NAME` prints one in full;\n"
    "[training](../training.md) says how to run them and where the sizes come from):"
)


def shipped_recipes() -> list:
    """Every installed recipe of a distribution in this checkout's ``plugins/``: by family, its models in
    the order the plugin registers them, pretrain before SFT."""
    from bridge_core.plugins.discovery import get_registry
    from bridge_core.training.recipe import KINDS, load_recipe

    regs = [r for r in get_registry().recipes.values() if (ROOT / "plugins" / r.distribution).is_dir()]
    models = list(dict.fromkeys(r.name.rpartition("_")[0] for r in regs))
    recipes = [load_recipe(r.name) for r in regs]
    return sorted(recipes, key=lambda r: (r.family, models.index(r.name.rpartition("_")[0]), KINDS.index(r.kind)))


def _model(recipe) -> str:
    title, sep, _ = recipe.description.partition(": ")
    return title if sep else recipe.model.architecture


def row(recipe) -> str:
    p, t = recipe.config.parallel, recipe.config.train
    cells = [
        f"`{recipe.name}`",
        _model(recipe),
        recipe.kind,
        recipe.sized_for.gpus,
        p.tp,
        p.pp,
        p.vpp or "-",
        p.ep,
        t.seq_length,
        f"{t.global_batch_size} / {t.micro_batch_size}",
    ]
    return "| " + " | ".join(str(c) for c in cells) + " |\n"


def table(recipes: list) -> str:
    return BEGIN + "\n" + HEADER + "".join(row(r) for r in recipes) + END


def _replace(text: str, block: str) -> str:
    return replace_marked(text, BEGIN, END, block)


def with_training_section(text: str, block: str) -> str:
    """``text`` (a family page) with ``block`` as its Training section's table."""
    if BEGIN in text:
        return _replace(text, block)
    section = f"{TRAINING_INTRO}\n\n{block}\n"
    found = re.search(r"^## Training\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    if found:
        kept = found.group(1).strip()
        kept = "" if kept.startswith("Recipes (pretrain, SFT, PEFT) come with") and "\n" not in kept else kept
        body = f"## Training\n{section}" + (f"\n{kept}\n" if kept else "") + "\n"
        return text[: found.start()] + body + text[found.end() :]
    limits = text.find("## Known limitations")
    at = limits if limits >= 0 else len(text)
    return text[:at] + f"## Training\n{section}\n" + text[at:]


def rendered(recipes: list) -> dict[Path, str]:
    """What each documentation file should hold for ``recipes``."""
    out: dict[Path, str] = {}
    training = ROOT / "docs" / "training.md"
    out[training] = _replace(training.read_text(), table(recipes))
    for family in sorted({r.family for r in recipes}):
        page = family_page(family)
        if page.is_file():
            out[page] = with_training_section(page.read_text(), table([r for r in recipes if r.family == family]))
    return out


def stale(recipes: list) -> list[Path]:
    """The documentation files whose recipe tables differ from ``recipes``."""
    return [path for path, text in rendered(recipes).items() if path.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a table is out of date; write nothing")
    args = parser.parse_args(argv)
    return write_or_check(rendered(shipped_recipes()), args.check, "recipe table", "scripts/gen_recipe_docs.py")


if __name__ == "__main__":
    sys.exit(main())
