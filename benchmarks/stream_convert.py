"""Conversion without building the model: time and peak memory against the I/O floor, in one run.

``python benchmarks/stream_convert.py --work DIR --size smollm2:0 --size 2:24 --size 26:315``: the
real SmolLM2-135M (fp32, from its GGUF), and Qwen2-1.5B-wide bf16 toys (GB label : layers). For each:
the floor (read its bytes once, write them once with fsync: ``floor.copy_floor``), ``bridgectl
import`` (streamed, ``--workers``), the floor of the way back (the checkpoint's files), and
``bridgectl export``; the page cache is dropped before each timed step where the kernel allows it.
``--repeat N`` runs those pairs N times and reports the run of median ratio (all runs are kept);
each conversion's own timeline (start-up, libraries, planning, converting) is recorded with it.
The round trip is checked tensor by tensor against hashes of the source taken before it is deleted
(``--delete-source`` lets a toy larger than half the disk fit).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from floor import copy_floor  # noqa: E402
from harness import check, measure, remove, settle  # noqa: E402
from models import ToySpec, folder_bytes, make_smollm2, make_toy  # noqa: E402


def drop_caches() -> bool:
    settle()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def tensor_hashes(folder: Path) -> dict[str, str]:
    import torch
    from safetensors import safe_open

    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name).contiguous()
                digest = hashlib.sha256(t.view(-1).view(torch.uint8).numpy()).hexdigest()
                out[name] = f"{t.dtype}{tuple(t.shape)}:{digest}"
    return out


PHASES = re.compile(r"total ([\d.]+) s \((.*)\)")
PART = re.compile(r"([^,]+?) ([\d.]+) s")


def phases(output: str) -> dict[str, float]:
    """The command's own timeline (its last ``total X s (start-up a s, ..., converting d s)`` line)."""
    found = PHASES.findall(output)
    if not found:
        return {}
    total, parts = found[-1]
    out = {"total": float(total)}
    for name, value in PART.findall(parts):
        out[name.strip().replace(" ", "_")] = float(value)
    return out


def step(command: list[str], floor: dict, nbytes: int) -> dict:
    """One conversion, right after its floor: wall, the command's phases, and the ratios to the floor."""
    drop_caches()
    r = check(measure(command, env={"OMP_NUM_THREADS": "1"}, timeout=7200))
    r["phases"] = phases(r["output_tail"])
    r["floor"] = floor
    r["floor_ratio"] = floor["wall_s"] / r["wall_s"]
    if "converting" in r["phases"]:  # start-up, library loading and planning left out
        r["floor_ratio_converting"] = floor["wall_s"] / r["phases"]["converting"]
    r["gb_s"] = nbytes / 1e9 / r["wall_s"]
    r["load_average"] = os.getloadavg()[0]  # of the shared machine, after the step
    r["output_tail"] = r["output_tail"][-600:]
    return r


def median_step(runs: list[dict]) -> dict:
    """The run of median floor ratio (each run is paired with its own floor, measured just before it)."""
    return sorted(runs, key=lambda r: r["floor_ratio"])[len(runs) // 2]


def run_size(label: str, layers: int, work: Path, workers: int, delete_source: bool, repeat: int) -> dict:
    bridgectl = str(Path(sys.executable).parent / "bridgectl")
    if label == "smollm2":  # the real SmolLM2-135M (fp32, from its GGUF), kept: the source is not deleted
        toy, delete_source = make_smollm2(work)["fp32"], False
    else:
        toy = make_toy(ToySpec(f"stream-{label}", layers), work / f"toy-{label}")
    if delete_source and repeat > 1:
        raise SystemExit("--delete-source: one run only (--repeat 1)")
    nbytes = folder_bytes(toy)
    hashes = tensor_hashes(toy)
    megatron, back = work / f"megatron-{label}", work / f"hf-{label}"
    result: dict = {"label": label, "layers": layers, "bytes": nbytes, "tensors": len(hashes), "workers": workers}
    result["cache_dropped"] = drop_caches()
    runs: dict[str, list[dict]] = {"import": [], "export": []}
    exact = []
    for _ in range(repeat):
        remove(megatron), remove(back)
        drop_caches()
        floor = copy_floor(toy, work / "floor")
        command = [bridgectl, "import", "--hf-model", str(toy), "--megatron-path", str(megatron)]
        runs["import"].append(step(command + ["--workers", str(workers)], floor, nbytes))
        if delete_source:
            shutil.rmtree(toy)
        drop_caches()
        floor = copy_floor(megatron / "iter_0000000", work / "floor", pattern="*.distcp")
        command = [bridgectl, "export", "--megatron-path", str(megatron), "--hf-path", str(back)]
        runs["export"].append(step(command, floor, nbytes))
        got = tensor_hashes(back)
        exact.append(got == hashes)
        result["differing"] = sorted(k for k in hashes.keys() | got.keys() if hashes.get(k) != got.get(k))[:8]
    remove(megatron), remove(back)
    result["round_trip_exact"] = all(exact)
    for name, done in runs.items():
        result[name] = median_step(done)
        result[f"floor_{name}"] = result[name]["floor"]
        result[f"{name}_runs"] = [
            {k: r[k] for k in ("wall_s", "floor_ratio", "floor_ratio_converting", "peak_rss_tree", "load_average")
             if k in r} | {"floor_s": r["floor"]["wall_s"], "phases": r["phases"]}
            for r in done
        ]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--size", action="append", default=[], help="LABEL:LAYERS, e.g. 2:24; smollm2:0 the real one")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--delete-source", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="floor + conversion pairs per size (the median is shown)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "stream_convert.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for spec in args.size or ["2:24"]:
        label, layers = spec.split(":")
        r = run_size(label, int(layers), args.work, args.workers, args.delete_source, args.repeat)
        results.append(r)
        shown = ("wall_s", "peak_rss_tree", "floor_ratio", "floor_ratio_converting", "gb_s", "phases")
        print(json.dumps({k: {x: v[x] for x in shown if x in v} if isinstance(v, dict) else v
                          for k, v in r.items() if not k.endswith("_runs")}))
    args.out.write_text(json.dumps({"machine": os.uname().nodename, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
