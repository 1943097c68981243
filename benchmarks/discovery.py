"""Discovery latency: ``import bridge_core`` and ``bridgectl plugins`` with the installed plugins and with
dummy plugins added up to 20, and whether either imports torch / megatron / transformers.

Dummy plugins are real installed distributions as far as ``importlib.metadata`` is concerned: a
``*.dist-info`` folder with an ``entry_points.txt`` in the ``bridge_core.plugins`` group and a module
registering one architecture (by string), on a folder put on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from harness import measure, summary

PLUGIN_MODULE = '''"""Benchmark dummy plugin {i}."""
from bridge_core import hookimpl

BRIDGE_CONTRACT = ">=1.0,<2"


@hookimpl
def register_bridges(register):
    register(architecture="BenchDummy{i}ForCausalLM", bridge="bench_dummy_{i}.bridge:Bridge", model_type="dummy{i}")
'''


def make_dummy_plugins(folder: Path, count: int) -> Path:
    """``count`` dummy plugin distributions under ``folder`` (recreated)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(count):
        name = f"bench_dummy_{i}"
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(PLUGIN_MODULE.format(i=i))
        info = folder / f"bench_dummy_{i}-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: bench-dummy-{i}\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text(f"[bridge_core.plugins]\ndummy{i} = {name}\n")
        (info / "RECORD").write_text("")
    return folder


def _env(extra_path: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(extra_path), env.get("PYTHONPATH", "")) if p)
    return env


def _bridgectl() -> list[str]:
    script = Path(sys.executable).with_name("bridgectl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bridge_core.cli.main"]


PROBE = r"""
import json, sys, time, io, contextlib
t = time.perf_counter()
import bridge_core
import_s = time.perf_counter() - t
from bridge_core.cli.main import main
buf = io.StringIO()
t = time.perf_counter()
with contextlib.redirect_stdout(buf):
    main(["plugins", "--json"])
plugins_s = time.perf_counter() - t
doc = json.loads(buf.getvalue())
HEAVY = ("torch", "megatron", "megatron.core", "transformers", "safetensors", "numpy")
heavy = sorted(m for m in HEAVY if m in sys.modules)
print(json.dumps({"import_s": import_s, "plugins_in_process_s": plugins_s, "heavy_modules": heavy,
                  "plugins": len(doc["plugins"]), "loaded": sum(p["status"] == "loaded" for p in doc["plugins"])}))
"""


def run(cache: Path, repeats: int = 5, total: int = 20) -> dict:
    """Timings with the installed plugins, and with dummies added up to ``total`` plugins."""
    out: dict = {}
    probe0 = json.loads(
        subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=_env(None), check=True).stdout
    )
    installed = probe0["plugins"]
    dummies = make_dummy_plugins(cache / "dummy-plugins", max(0, total - installed))
    for label, extra in ((f"{installed}", None), (f"{total}", dummies)):
        env = _env(extra)
        probes = [
            json.loads(
                subprocess.run(
                    [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True
                ).stdout
            )
            for _ in range(repeats)
        ]
        walls = [measure([*_bridgectl(), "plugins"], env=env)["wall_s"] for _ in range(repeats)]
        bare = [measure([sys.executable, "-c", "pass"], env=env)["wall_s"] for _ in range(repeats)]
        imp = [measure([sys.executable, "-c", "import bridge_core"], env=env)["wall_s"] for _ in range(repeats)]
        out[label] = {
            "plugins": probes[0]["plugins"],
            "loaded": probes[0]["loaded"],
            "heavy_modules_after_plugins": probes[0]["heavy_modules"],
            "import_bridge_core_in_process_s": summary([p["import_s"] for p in probes]),
            "plugins_in_process_s": summary([p["plugins_in_process_s"] for p in probes]),
            "bridgectl_plugins_wall_s": summary(walls),
            "python_startup_wall_s": summary(bare),
            "python_import_bridge_core_wall_s": summary(imp),
        }
    return out


if __name__ == "__main__":
    print(json.dumps(run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/bench-discovery")), indent=2))
