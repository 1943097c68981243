"""Refuse inputs that would bake a broken plugin (cookiecutter runs this before generating anything).

The names follow one rule: family ``foo_bar`` -> distribution ``bridge-foo-bar``, module
``bridge_foo_bar``, entry point ``foo_bar``. Every problem is listed on stderr and the bake stops.
``bridgectl new-plugin`` also imports this file unrendered and calls ``problems()`` before baking.
"""

import json
import keyword
import re
import sys

FAMILY = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
ARCHITECTURE = re.compile(r"^[A-Z][A-Za-z0-9_]*$")
MODEL_TYPE = re.compile(r"^[a-z][a-z0-9_.-]*$")
# Families whose names would collide with the core's own distribution or modules.
RESERVED = {"core", "bridge", "plugin", "plugins", "template", "testing", "test", "tests"}


def problems(ctx: dict) -> list[str]:
    """Every reason to refuse ``ctx`` (the cookiecutter context); empty when it is fine."""
    out = []
    family = str(ctx.get("family", ""))
    if not FAMILY.match(family):
        out.append(
            f"family {family!r}: use lowercase letters and digits, words joined by single underscores, "
            "starting with a letter (e.g. 'mistral', 'gpt_oss')"
        )
    elif keyword.iskeyword(family) or family in RESERVED:
        out.append(f"family {family!r} is reserved; pick the model family's own name")
    else:
        expected = {
            "__project_slug": "bridge-" + family.replace("_", "-"),
            "__module_name": "bridge_" + family,
        }
        for key, value in expected.items():
            if key in ctx and ctx[key] != value:
                out.append(f"{key.strip('_')} must be {value!r} for family {family!r}, got {ctx.get(key)!r}")
    raw_archs = ctx.get("architectures", "")
    archs = [a.strip() for a in raw_archs.split(",")]
    if not raw_archs.strip():
        out.append("architectures: name at least one HF architecture class, e.g. 'MistralForCausalLM'")
    else:
        bad = [a for a in archs if not ARCHITECTURE.match(a)]
        out += [f"architecture {a!r} is not a class name (e.g. 'MistralForCausalLM')" for a in bad]
        if len(set(archs)) != len(archs):
            out.append(f"architectures {raw_archs!r} lists a class twice")
    model_type = ctx.get("model_type", "")
    if not MODEL_TYPE.match(model_type):
        out.append(f"model_type {model_type!r}: use the lowercase model_type of config.json (e.g. 'mistral')")
    if ctx.get("kind") not in ("LLM", "VLM"):
        out.append(f"kind must be LLM or VLM, got {ctx.get('kind')!r}")
    if not str(ctx.get("author", "x")).strip():
        out.append("author must not be empty")
    if not re.match(r"^\d+\.\d+$", ctx.get("__core_version", "1.0")):
        out.append(f"core version must be MAJOR.MINOR, got {ctx.get('__core_version')!r}")
    return out


def main() -> int:
    # The rendered context, as JSON inside a raw string so that any input keeps this file valid Python.
    context = json.loads(r"""{{ cookiecutter | tojson }}""")
    found = problems(context)
    for problem in found:
        print(f"ERROR: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
