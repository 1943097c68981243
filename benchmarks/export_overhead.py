"""Host cost per exported tensor (issue 19): tensors/s of ``export_hf_weights`` on a Qwen3-MoE toy.

    python benchmarks/export_overhead.py                          # this checkout
    python benchmarks/export_overhead.py --baseline 63f0597       # and that commit's core, in the same run
    python benchmarks/export_overhead.py --profile 25             # cProfile of one export (top 25, own time)
    python benchmarks/export_overhead.py --device cuda --baseline REV   # the same on a GPU (tiny tensors)

The toy has Qwen3-30B-A3B's tensor count at tiny widths (4 layers of 128 experts, hidden 64: 1,575 HF
tensors, as ``gpu_export.py --shape qwen3_moe --layers 4``), so that the cost per tensor, not the bytes,
is what is timed. Each side runs in processes of its own, alternating (``--rounds``): this checkout's
``core/src``, and with ``--baseline REV`` that commit's, unpacked from git into
``benchmarks/.cache/export_overhead/REV`` (the installed plugins serve both). Each process builds the
toy once and times ``--repeats`` exports of each mode after a warm-up:

- ``export``: ``for name, t in export_hf_weights(model, cpu=True)`` (planned again every time);
- ``export_plan``: the same with ``plan=weight_sync_plan(model)`` (the per-tensor loop alone);
- ``batched`` (where the core has it): the tensors of ``export_plan`` (``cpu=False``) through
  ``host_copy.to_host`` with every tensor sent down the batched device-to-host path, the CPU standing
  in for the device (on a CPU model: the GPU path's host cost per tensor, plus real copies of the toy's
  bytes).

Prints JSON (``--out`` writes it too): per side and mode the tensors, the best and median seconds,
tensors/s and microseconds per tensor (from the median), and each mode's speed-up over the baseline.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
import warnings
from io import BytesIO
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache" / "export_overhead"


def build(device: str, layers: int, experts: int):
    """The bridge and a bf16 model of the toy (random values), on ``device``."""
    sys.path.insert(0, str(HERE))
    from gpu_export import _use_checkout, make_hf_config

    _use_checkout()  # the checkout's (or the baseline's) core with its llama and qwen plugins, no entry points
    from bridge_core.conversion.auto_bridge import AutoBridge

    config = make_hf_config("qwen3_moe", layers, tiny=True, num_experts=experts, num_experts_per_tok=8)
    bridge = AutoBridge.from_hf_config(config, torch_dtype="bfloat16")
    provider = bridge.to_megatron_provider()
    provider.transformer_layer_spec = "local"
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    return bridge, model


def modes(bridge, model) -> dict:
    """Mode name -> a function running one whole export and returning the number of tensors."""
    from bridge_core.conversion import host_copy

    plan = bridge.weight_sync_plan(model)

    def drain(stream) -> int:
        n = 0
        for _name, _tensor in stream:
            n += 1
        return n

    out = {
        "export": lambda: drain(bridge.export_hf_weights(model, cpu=True)),
        "export_plan": lambda: drain(bridge.export_hf_weights(model, cpu=True, plan=plan)),
    }
    if hasattr(host_copy, "partition"):  # the batched path (not in cores before issue 19's change)
        stream = lambda: bridge.export_hf_weights(model, cpu=False, plan=plan)  # noqa: E731
        out["batched"] = lambda: drain(host_copy.to_host(stream(), transfer=lambda t: True))
    return out


def worker(args) -> None:
    warnings.filterwarnings("ignore")
    import torch

    bridge, model = build(args.device, args.layers, args.experts)
    if args.gc_freeze:  # the model and the interpreter out of the collector's way: its passes over them
        gc.collect()  # (tens to hundreds of ms, whenever an export's garbage triggers one) are not timed
        gc.freeze()
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    doc: dict = {"core": str(Path(sys.modules["bridge_core"].__file__).parent), "modes": {}}
    for mode, run in modes(bridge, model).items():
        tensors = run()  # warm-up: plans, caches, pinned blocks
        times = []
        for _ in range(args.repeats):
            sync()
            start = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - start)
        doc["modes"][mode] = {"tensors": tensors, "times": times}
    print(json.dumps(doc))


def profile(args) -> None:
    import cProfile
    import pstats

    warnings.filterwarnings("ignore")
    bridge, model = build(args.device, args.layers, args.experts)
    run = modes(bridge, model)["export"]
    run()
    prof = cProfile.Profile()
    prof.enable()
    run()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)


def unpack(rev: str) -> Path:
    """``core/src`` of commit ``rev``, unpacked once under ``benchmarks/.cache`` (a folder: that folder,
    e.g. one unpacked here and carried to a machine without the git history)."""
    if Path(rev).is_dir():
        return Path(rev).resolve()
    sha = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    folder = CACHE / sha.strip()[:12]
    if not (folder / "core" / "src" / "bridge_core").is_dir():
        blob = subprocess.run(["git", "archive", sha.strip(), "core/src"], cwd=ROOT, capture_output=True, check=True)
        with tarfile.open(fileobj=BytesIO(blob.stdout)) as tar:
            tar.extractall(folder, filter="data")
    return folder / "core" / "src"


def run_side(src: Path, args) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--device", args.device]
    cmd += ["--layers", str(args.layers), "--experts", str(args.experts), "--repeats", str(args.repeats)]
    cmd += ["--gc-freeze"] if args.gc_freeze else []
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"export_overhead worker ({src}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(runs: list[dict]) -> dict:
    out = {}
    for mode in runs[0]["modes"]:
        times = [t for r in runs for t in r["modes"][mode]["times"]]
        n = runs[0]["modes"][mode]["tensors"]
        median = statistics.median(times)
        out[mode] = {
            "tensors": n,
            "best_s": min(times),
            "median_s": median,
            "tensors_per_s": n / median,
            "us_per_tensor": median / n * 1e6,
        }
    return out


def driver(args) -> int:
    sides = {"checkout": ROOT / "core" / "src"}
    if args.baseline:
        sides = {f"baseline {args.baseline}": unpack(args.baseline), **sides}
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, src in sides.items():
            runs[name].append(run_side(src, args))
    doc: dict = {
        "device": args.device,
        "toy": {"layers": args.layers, "experts": args.experts, "hidden": 64, "moe_intermediate": 32},
        "rounds": args.rounds,
        "gc_freeze": args.gc_freeze,
        "repeats": args.repeats,
        "sides": {name: summary(r) for name, r in runs.items()},
    }
    if args.baseline:
        base, new = doc["sides"][f"baseline {args.baseline}"], doc["sides"]["checkout"]
        doc["speedup"] = {m: base[m]["median_s"] / new[m]["median_s"] for m in base if m in new}
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed exports per mode and process")
    parser.add_argument("--rounds", type=int, default=3, help="processes per side, alternating")
    parser.add_argument("--baseline", default=None, help="a git revision (or a core/src folder) to time as well")
    parser.add_argument(
        "--gc-freeze", action="store_true", help="gc.freeze() after building the toy (collector passes over it untimed)"
    )
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="profile one export: top N functions")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch starts CUDA: the model stays on the CPU
    if args.worker:
        worker(args)
        return 0
    if args.profile:
        profile(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
