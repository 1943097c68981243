"""Conversion without building the model: time and peak memory against the I/O floor, in one run.

``python benchmarks/stream_convert.py --work DIR --size smollm2:0 --size 2:24 --size 26:315``: the
real SmolLM2-135M (fp32, from its GGUF), and Qwen2-1.5B-wide bf16 toys (GB label : layers). For each:
the floor (read its bytes once, write them once with fsync: ``floor.copy_floor``), ``bridgectl
import`` (streamed, ``--workers``), the floor of the way back (the checkpoint's files), and
``bridgectl export``; the page cache is dropped before each timed step where the kernel allows it.
The round trip is checked tensor by tensor against hashes of the source taken before it is deleted
(``--delete-source`` lets a toy larger than half the disk fit).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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


def run_size(label: str, layers: int, work: Path, workers: int, delete_source: bool) -> dict:
    bridgectl = str(Path(sys.executable).parent / "bridgectl")
    if label == "smollm2":  # the real SmolLM2-135M (fp32, from its GGUF), kept: the source is not deleted
        toy, delete_source = make_smollm2(work)["fp32"], False
    else:
        toy = make_toy(ToySpec(f"stream-{label}", layers), work / f"toy-{label}")
    nbytes = folder_bytes(toy)
    hashes = tensor_hashes(toy)
    megatron, back = work / f"megatron-{label}", work / f"hf-{label}"
    remove(megatron), remove(back)
    result: dict = {"label": label, "layers": layers, "bytes": nbytes, "tensors": len(hashes), "workers": workers}
    result["cache_dropped"] = drop_caches()
    result["floor_import"] = copy_floor(toy, work / "floor")
    drop_caches()
    command = [bridgectl, "import", "--hf-model", str(toy), "--megatron-path", str(megatron), "--workers", str(workers)]
    result["import"] = check(measure(command, env={"OMP_NUM_THREADS": "1"}, timeout=7200))
    if delete_source:
        shutil.rmtree(toy)
    drop_caches()
    result["floor_export"] = copy_floor(megatron / "iter_0000000", work / "floor", pattern="*.distcp")
    drop_caches()
    command = [bridgectl, "export", "--megatron-path", str(megatron), "--hf-path", str(back)]
    result["export"] = check(measure(command, env={"OMP_NUM_THREADS": "1"}, timeout=7200))
    got = tensor_hashes(back)
    result["round_trip_exact"] = got == hashes
    result["differing"] = sorted(k for k in hashes.keys() | got.keys() if hashes.get(k) != got.get(k))[:8]
    for step in ("import", "export"):
        r, f = result[step], result[f"floor_{step}"]
        r["floor_ratio"] = f["wall_s"] / r["wall_s"]
        r["gb_s"] = nbytes / 1e9 / r["wall_s"]
        r["output_tail"] = r["output_tail"][-600:]
    remove(megatron), remove(back)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--size", action="append", default=[], help="LABEL:LAYERS, e.g. 2:24; smollm2:0 the real one")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--delete-source", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "stream_convert.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for spec in args.size or ["2:24"]:
        label, layers = spec.split(":")
        r = run_size(label, int(layers), args.work, args.workers, args.delete_source)
        results.append(r)
        shown = ("wall_s", "peak_rss_tree", "floor_ratio", "gb_s")
        print(json.dumps({k: {x: v[x] for x in shown if x in v} if isinstance(v, dict) else v for k, v in r.items()}))
    args.out.write_text(json.dumps({"machine": os.uname().nodename, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
