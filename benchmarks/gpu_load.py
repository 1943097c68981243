"""GPU load throughput: HF safetensors -> the parameters of an ~8B-shaped model on one GPU (TP=1).

    python benchmarks/gpu_load.py --work /tmp/gpu-load --out benchmarks/results/gpu_load.json

One process, one GPU. It builds the model with our provider directly on the GPU (Llama-3-8B widths,
``--layers`` deep, bf16, local layer spec), fills it with random values and writes it as an HF folder
under ``--work`` with our exporter (kept for the next run). Then, in the same run and on the same
model object, median of ``--repeats``:

- limits: the pinned host-to-device copy (one 1 GiB pinned buffer, repeated), and a reference loader
  with the files in the page cache (each file's bytes read on 8 threads into reusable pinned buffers
  and copied asynchronously into one flat GPU buffer: no formatting, no mapping, nothing else);
- ours: ``AutoBridge.load_hf_weights(model, folder)`` with the files cached, and once from a cold
  cache (the pages dropped with ``posix_fadvise(DONTNEED)``) next to a cold read of the same files
  on 8 threads (the disk's rate);
- mbridge 0.15.1 (when it imports): ``load_weights(model, folder)`` with the files cached.

Before each load the parameters are zeroed; after it, a sampled fingerprint of every parameter must
equal the one taken after the random fill (so a side that loads nothing or the wrong tensor fails).
Host memory: the largest rise of this process's RSS during our load (sampled every 5 ms).
Without CUDA it prints ``{"skipped": ...}`` and exits 0.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_export import LLAMA3_8B, _free_port, _hf_config, _mbridge, _use_checkout, _versions

CHUNK = 64 << 20
GB = 1e9


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def warm_cache(files: list[Path]) -> None:
    buf = bytearray(CHUNK)
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def drop_cache(files: list[Path]) -> None:
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _ranges(files: list[Path]) -> list[tuple[Path, int, int, int]]:
    """(file, offset, length, offset in the flat destination) in CHUNK pieces."""
    out, dest = [], 0
    for path in files:
        size = path.stat().st_size
        for off in range(0, size, CHUNK):
            n = min(CHUNK, size - off)
            out.append((path, off, n, dest))
            dest += n
    return out


def reference_load(files: list[Path], flat, threads: int) -> float:
    """Seconds to move every byte of ``files`` into the GPU buffer ``flat`` (page cache -> pinned -> GPU)."""
    import torch

    ranges = _ranges(files)
    local = threading.local()

    def work(item):
        path, off, n, dest = item
        if not hasattr(local, "bufs"):
            local.bufs = [torch.empty(CHUNK, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
            local.events = [None, None]
            local.turn = 0
            local.stream = torch.cuda.Stream()
            local.fds = {}
        i = local.turn = 1 - local.turn
        if local.events[i] is not None:
            local.events[i].synchronize()
        buf = local.bufs[i]
        fd = local.fds.get(path) or local.fds.setdefault(path, os.open(path, os.O_RDONLY))
        view, got = memoryview(buf.numpy())[:n], 0
        while got < n:
            got += os.preadv(fd, [view[got:]], off + got)
        with torch.cuda.stream(local.stream):
            flat[dest : dest + n].copy_(buf[:n], non_blocking=True)
            local.events[i] = local.stream.record_event()
        return local.stream

    torch.cuda.synchronize()
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        streams = set(pool.map(work, ranges))
    for s in streams:
        s.synchronize()
    return time.perf_counter() - start


def cold_read(files: list[Path], threads: int) -> float:
    """Seconds to read ``files`` from a dropped cache on ``threads`` threads into reused host buffers."""
    drop_cache(files)
    local = threading.local()

    def work(item):
        path, off, n, _ = item
        if not hasattr(local, "buf"):
            local.buf = bytearray(CHUNK)
        with open(path, "rb", buffering=0) as f:
            view, got = memoryview(local.buf)[:n], 0
            while got < n:
                got += os.preadv(f.fileno(), [view[got:]], off + got)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, _ranges(files)))
    return time.perf_counter() - start


def pinned_h2d(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Best GB/s of one pinned host-to-device copy."""
    import torch

    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    best = 0.0
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        best = max(best, nbytes / (time.perf_counter() - start) / GB)
    return best


class RssPeak:
    """The largest rise of this process's resident memory while active (sampled every 5 ms)."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.rise = self.peak - self.base


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=None, help="hidden size (default 4096)")
    parser.add_argument("--ffn", type=int, default=None, help="MLP size (default 14336)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8, help="reference loader and cold-read threads")
    parser.add_argument("--work", default="/tmp/gpu-load", help="folder for the HF checkpoint (kept)")
    parser.add_argument("--ours-only", action="store_true")
    parser.add_argument("--profile", action="store_true", help="cProfile one cached load of ours (stderr)")
    parser.add_argument("--sweep", nargs="*", default=[], help="also ours at THREADS:CHUNK_MB settings (best of 2)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return 0
    import torch.distributed as dist

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1)
    torch.cuda.set_device(0)
    _use_checkout()
    from bridge_core.conversion.auto_bridge import AutoBridge

    bridge = AutoBridge.from_hf_config(_hf_config(args), torch_dtype="bfloat16")
    provider = bridge.to_megatron_provider()
    provider.transformer_layer_spec = "local"
    provider.perform_initialization = False
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    from live_worker import tag_tp_attributes

    tag_tp_attributes(model)
    params = [p for chunk in model for p in chunk.parameters()]
    gen = torch.Generator(device="cuda").manual_seed(1234)
    with torch.no_grad():
        for p in params:
            p.normal_(0.0, 0.02, generator=gen)
            p.copy_(p.to(torch.bfloat16))  # fp32 norms of the local spec: values the bf16 checkpoint holds

    def fingerprint():
        return [round(float(p.detach().reshape(-1)[::4099].double().sum()), 6) for p in params]

    truth = fingerprint()
    folder = Path(args.work) / f"llama3-8b-shape-{args.layers}l"
    if not (folder / "model.safetensors.index.json").is_file():
        bridge.save_hf_pretrained(model, folder, overwrite=True)
    files = _files(folder)
    nbytes = sum(f.stat().st_size for f in files)

    def timed(load, cold=False) -> tuple[float, bool]:
        with torch.no_grad():
            for p in params:
                p.zero_()
        (drop_cache if cold else warm_cache)(files)
        torch.cuda.synchronize()
        start = time.perf_counter()
        load()
        torch.cuda.synchronize()
        return time.perf_counter() - start, fingerprint() == truth

    flat = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    reports: list = []
    sides = {"ours": lambda: reports.append(bridge.load_hf_weights(model, folder))}
    errors: dict[str, str] = {}
    if not args.ours_only:
        try:
            mb = _mbridge(bridge.hf_config, provider, torch.bfloat16)
            sides["mbridge"] = lambda: mb.load_weights(model, str(folder))
        except Exception as exc:
            errors["mbridge"] = f"{type(exc).__name__}: {exc}"
    times: dict[str, list[float]] = {"reference": []}
    exact: dict[str, bool] = {}
    rss = 0
    for _ in range(args.repeats):
        warm_cache(files)
        times["reference"].append(reference_load(files, flat, args.threads))
        for side, load in list(sides.items()):
            try:
                if side == "ours":
                    with RssPeak() as peak:
                        secs, ok = timed(load)
                    rss = max(rss, peak.rise)
                else:
                    secs, ok = timed(load)
            except Exception as exc:
                errors[side] = f"{type(exc).__name__}: {exc}"
                del sides[side]
                continue
            times.setdefault(side, []).append(secs)
            exact[side] = exact.get(side, True) and ok
    cold_ours, cold_ok = timed(sides["ours"], cold=True) if "ours" in sides else (None, False)
    if args.profile and "ours" in sides:  # the main thread's time (planning, submitting, waiting), to stderr
        import cProfile
        import pstats

        with cProfile.Profile() as prof:
            timed(sides["ours"])
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(30)
    sweep = {}
    if "ours" in sides:
        from bridge_core.conversion import row_reader

        for setting in args.sweep:  # THREADS:CHUNK_MB, ours with the files cached
            threads, chunk = setting.split(":")
            os.environ["BRIDGE_READ_THREADS"], row_reader.CHUNK_BYTES = threads, int(chunk) << 20
            secs = sorted(timed(sides["ours"])[0] for _ in range(2))
            sweep[setting] = nbytes / secs[0] / GB
        os.environ.pop("BRIDGE_READ_THREADS", None)
    disk = cold_read(files, args.threads)
    median = {s: statistics.median(v) for s, v in times.items() if v}
    rate = {s: nbytes / t / GB for s, t in median.items()}
    doc = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": torch.cuda.get_device_name(0),
        "versions": _versions(),
        "model": {**LLAMA3_8B, "num_hidden_layers": args.layers},
        "bytes": nbytes,
        "files": len(files),
        "read_threads": os.environ.get("BRIDGE_READ_THREADS") or "default",
        "times_s": times,
        "GB_per_s": rate,
        "pinned_h2d_GB_per_s": pinned_h2d(),
        "cold": {"ours_GB_per_s": nbytes / cold_ours / GB if cold_ours else None, "ours_exact": cold_ok},
        "cold_disk_read_GB_per_s": nbytes / disk / GB,
        "ours_of_reference": rate.get("ours", 0) / rate["reference"],
        "ours_over_mbridge": rate.get("ours", 0) / rate["mbridge"] if "mbridge" in rate else None,
        "cold_ours_of_disk": (nbytes / cold_ours / GB) / (nbytes / disk / GB) if cold_ours else None,
        "host_rss_rise_bytes": rss,
        "ours_load_tasks_s": [round(r.seconds, 3) for r in reports],  # of which the reads (the rest: planning)
        "ours_direct_tensors": f"{reports[-1].direct} of {reports[-1].tensors}" if reports else None,
        "sweep_threads_chunk_mb_GB_per_s": sweep,
        "exact": exact,
        "errors": errors,
    }
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
