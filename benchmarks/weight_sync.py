"""RL refit time with and without the weight-sync plan, against mbridge: every HF tensor to every rank.

    python benchmarks/weight_sync.py --mode cpu --out benchmarks/results/weight_sync_cpu.json
    python benchmarks/weight_sync.py --mode gpu --out $OUT/weight_sync_gpu.json       # one GPU
    python benchmarks/weight_sync.py --mode gpu --device cpu --tiny                    # its dry run on the CPU

The driver (this command) starts one ``torchrun`` per configuration (a failure or ``--timeout`` is
recorded and the next one runs) and writes the runs' JSON:

- ``cpu``: gloo, CUDA hidden, 2 processes, fp32: a small Llama (hidden 512, MLP 1536, 8 heads, 4 KV
  groups, 8 layers, vocabulary 32000) at TP=2 and a small Qwen3-MoE (hidden 512, 8 heads, 4 KV groups,
  32 experts of MLP 128, top-4, 8 layers, vocabulary 32000) at EP=2;
- ``gpu``: one process, TP=1, bf16: Llama-3-8B (``--layers``, default 32) and Qwen3-30B-A3B's layer
  shapes (128 experts of 3 tensors per layer; ``--moe-layers``, default 24). ``--device cpu`` runs the
  same code on gloo, ``--tiny`` with tiny widths (a dry run); without ``--device cpu`` and without CUDA
  it prints ``{"skipped": ...}``.

Each worker builds the model with our provider (local layer spec) and fills it with random values. A
refit streams every HF tensor into a sink that stands for the transport: a receive buffer preallocated
on the model's device (one bucket plus the largest tensor), each tensor copied into it, and the device
synchronised when a bucket is full (the "send"). Sides, alternating on the same model object, one
warm-up pass (which also checks the sides against each other: names, shapes, sampled sums) and then
``--repeats`` timed passes (median):

- ``cached``: ``export_weight_buckets(model, plan)`` with the plan made once (``weight_sync_plan``);
- ``uncached``: the same with the plan made again on every refit (its planning time is recorded);
- ``mbridge``: mbridge 0.15.1's ``export_weights(model)``, its tensors put into the sink in buckets of
  the same size (its error is recorded where it does not import or fails);
- limits, in the same run: ``copy`` (the same bytes copied into the receive buffer from a source
  buffer, one copy per bucket: the device's copy limit) and ``param_copy`` (every live parameter
  copied into the sink as it is, no conversion: the floor for this number of tensors).

Peak extra device memory of each side (CUDA only; above the model and the sink) is recorded too.
``--python`` / ``--peer-env CACHE`` run the workers in another interpreter (the mbridge venv that
benchmarks/peer_env.py builds), so that mbridge imports.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
PREFIX = "[weight_sync]"
ALIGN = 256  # receive-buffer offsets, so that a byte offset is a whole number of elements of any dtype

SMALL_LLAMA = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
}
SMALL_MOE = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "moe_intermediate_size": 128,
    "num_experts": 32,
    "num_experts_per_tok": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "vocab_size": 32000,
}


def configurations(args) -> list[dict]:
    """(shape, layers, widths, TP, EP, processes) of each run of this mode."""
    if args.mode == "cpu":
        runs = [
            {"shape": "llama3_8b", "layers": args.layers or 8, "widths": SMALL_LLAMA, "tp": 2, "ep": 1},
            {"shape": "qwen3_moe", "layers": args.moe_layers or 8, "widths": SMALL_MOE, "tp": 1, "ep": 2},
        ]
    else:
        runs = [
            {"shape": "llama3_8b", "layers": args.layers or 32, "widths": {}, "tp": 1, "ep": 1},
            {"shape": "qwen3_moe", "layers": args.moe_layers or 24, "widths": {}, "tp": 1, "ep": 1},
        ]
    runs = [r for r in runs if not args.shapes or r["shape"] in args.shapes]
    for r in runs:
        r["nproc"] = r["tp"] * r["ep"]
        r["widths"] = {} if args.tiny else r["widths"]  # the tiny widths of gpu_export.TINY
    return runs


class Sink:
    """The transport's receive side: a buffer on ``device`` that each tensor is copied into; when the next
    tensor would take the bucket past ``bucket_bytes`` (or on ``flush``) the bucket is "sent": the
    device is synchronised and the buffer reused."""

    def __init__(self, capacity: int, bucket_bytes: int, device):
        import torch

        self.buf = torch.empty(capacity, dtype=torch.uint8, device=device)
        self.bucket_bytes = bucket_bytes
        self.sync = torch.cuda.synchronize if self.buf.is_cuda else (lambda: None)
        self.offset = self.filled = self.buckets = self.tensors = self.nbytes = 0
        self.first: float | None = None

    def put(self, tensor, auto: bool = True) -> None:
        n = tensor.numel() * tensor.element_size()
        if auto and self.filled and self.filled + n > self.bucket_bytes:
            self.flush()
        if self.offset + n > self.buf.numel():  # a planned bucket past the buffer (alignment): send early
            self.flush()
        self.buf[self.offset : self.offset + n].view(tensor.dtype).view(tensor.shape).copy_(tensor)
        self.offset += -(-n // ALIGN) * ALIGN
        self.filled += n
        self.tensors += 1
        self.nbytes += n

    def flush(self) -> None:
        if self.filled:
            self.sync()
            self.buckets += 1
            self.first = time.perf_counter() if self.first is None else self.first
        self.offset = self.filled = 0


def worker(args) -> None:
    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed as dist
    from gpu_export import _mbridge, _use_checkout, _versions, make_hf_config
    from live_worker import tag_tp_attributes

    _use_checkout()
    from bridge_core.conversion.auto_bridge import AutoBridge

    widths = json.loads(args.widths)
    t0 = time.perf_counter()
    config = make_hf_config(args.shape, args.layers, dtype=args.dtype, tiny=args.tiny, **widths)
    bridge = AutoBridge.from_hf_config(config, torch_dtype=args.dtype)
    provider = bridge.to_megatron_provider()
    provider.tensor_model_parallel_size = args.tp
    provider.expert_model_parallel_size = args.ep
    provider.transformer_layer_spec = "local"
    provider.perform_initialization = False
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    tag_tp_attributes(model)
    rank = dist.get_rank()
    params = [p for chunk in model for p in chunk.parameters()]
    device = params[0].device
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    gen = torch.Generator(device=device).manual_seed(1234 + rank)
    with torch.no_grad():
        for p in params:
            p.normal_(0.0, 0.02, generator=gen)
    sync()
    build_s = time.perf_counter() - t0

    def say(text: str) -> None:
        if rank == 0:
            print(f"{PREFIX} {args.shape}: {text} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)

    say(f"model built, {len(params)} parameters on {device}")
    bucket_bytes = int(args.bucket_mb * 2**20)
    plan_s: list[float] = []

    def make_plan():
        sync()
        start = time.perf_counter()
        made = bridge.weight_sync_plan(model, bucket_bytes=bucket_bytes)
        plan_s.append(time.perf_counter() - start)
        return made

    plan = make_plan()
    largest = max(b.nbytes for b in plan.buckets)
    most = max(len(b.names) for b in plan.buckets)
    sink = Sink(max(largest, bucket_bytes) + ALIGN * most, bucket_bytes, device)
    say(f"plan made in {plan_s[0]:.2f} s: {len(plan.tensors)} tensors, {len(plan.buckets)} buckets")

    def ours(fresh: bool):
        buckets = bridge.export_weight_buckets(model, make_plan() if fresh else plan, cpu=False)
        for bucket in buckets:
            for name, tensor in bucket:
                yield name, tensor, False
            yield None, None, True  # the end of a planned bucket

    sides = {"cached": lambda: ours(False), "uncached": lambda: ours(True)}
    errors: dict[str, str] = {}
    if not args.ours_only:
        try:
            mb = _mbridge(bridge.hf_config, provider, getattr(torch, args.dtype))
            sides["mbridge"] = lambda: ((n, t, False) for n, t in mb.export_weights(model))
        except Exception as exc:
            errors["mbridge"] = f"{type(exc).__name__}: {exc}"

    def run(side: str, prints: dict | None) -> dict:
        sync()
        dist.barrier()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if cuda else 0
        sink.offset = sink.filled = sink.buckets = sink.tensors = sink.nbytes = 0
        sink.first = None
        sums = []
        start = time.perf_counter()
        for name, tensor, end in sides[side]():
            if end:
                sink.flush()
                continue
            sink.put(tensor, auto=side == "mbridge")
            if prints is not None:
                prints[name] = tuple(tensor.shape)
                sums.append(tensor.reshape(-1)[::4099].to(torch.bfloat16).double().sum())  # mbridge: fp32 norms
        sink.flush()
        sync()
        dist.barrier()
        secs = time.perf_counter() - start
        if prints is not None:
            for (name, shape), value in zip(list(prints.items()), torch.stack(sums).tolist()):
                prints[name] = (shape, round(value, 3))
        return {
            "s": secs,
            "first_bucket_s": (sink.first or start) - start,
            "bytes": sink.nbytes,
            "tensors": sink.tensors,
            "buckets": sink.buckets,
            "extra_peak_bytes": torch.cuda.max_memory_allocated() - base if cuda else None,
        }

    def copy_limit() -> float:
        """The same bytes into the receive buffer, one copy per planned bucket (tensors laid end to end)."""
        src = torch.empty_like(sink.buf)
        sync()
        dist.barrier()
        start = time.perf_counter()
        for bucket in plan.buckets:
            sink.buf[: bucket.nbytes].copy_(src[: bucket.nbytes])
            sink.sync()
        secs = time.perf_counter() - start
        del src
        return secs

    def param_copy() -> float:
        sync()
        dist.barrier()
        sink.offset = sink.filled = 0
        start = time.perf_counter()
        with torch.no_grad():
            for p in params:
                sink.put(p.detach())
            sink.flush()
        return time.perf_counter() - start

    passes: dict[str, list[dict]] = {s: [] for s in sides}
    warmup: dict[str, dict] = {}
    prints: dict[str, dict] = {}
    limits: dict[str, list[float]] = {"copy": [], "param_copy": []}
    for i in range(args.repeats + 1):
        for side in list(sides):
            fp: dict | None = {} if i == 0 else None
            try:
                got = run(side, fp)
            except Exception as exc:
                errors[side] = f"{type(exc).__name__}: {exc}"
                del sides[side]
                say(f"{side} failed: {errors[side]}")
                continue
            if i == 0:
                warmup[side], prints[side] = got, fp
            else:
                passes[side].append(got)
        limits["copy"].append(copy_limit())
        limits["param_copy"].append(param_copy())
        done = warmup if i == 0 else {s: p[-1] for s, p in passes.items() if p}
        say(f"pass {i}{' (warm-up)' if i == 0 else ''}: " + ", ".join(f"{s} {p['s']:.3f} s" for s, p in done.items()))

    def check(side: str) -> bool | str:
        a, b = prints["cached"], prints[side]
        if a == b:
            return True
        return f"differ: {len(set(a) ^ set(b))} names, {sum(1 for k in set(a) & set(b) if a[k] != b[k])} values"

    if rank == 0:
        nbytes = plan.export.nbytes
        median = {s: statistics.median(p["s"] for p in v) for s, v in passes.items() if v}
        limit_s = {k: statistics.median(v) for k, v in limits.items() if v}
        copy_rate = nbytes / limit_s["copy"] / 1e9
        doc = {
            "shape": args.shape,
            "layers": args.layers,
            "versions": _versions(),
            "widths": widths,
            "tiny": args.tiny,
            "dtype": args.dtype,
            "tp": args.tp,
            "ep": args.ep,
            "world": dist.get_world_size(),
            "backend": dist.get_backend(),
            "device": str(device),
            "build_s": build_s,
            "bytes": nbytes,
            "tensors": len(plan.tensors),
            "parameters": len(params),
            "buckets": len(plan.buckets),
            "bucket_bytes": plan.bucket_bytes,
            "sink_bytes": sink.buf.numel(),
            "weight_sync_plan_s": plan_s,
            "passes": passes,
            "warmup": warmup,
            "median_s": median,
            "median_first_bucket_s": {
                s: statistics.median(p["first_bucket_s"] for p in v) for s, v in passes.items() if v
            },
            "GB_per_s": {s: passes[s][0]["bytes"] / t / 1e9 for s, t in median.items()},
            "limits_s": limit_s,
            "copy_limit_GB_per_s": copy_rate,
            "param_copy_GB_per_s": sum(p.numel() * p.element_size() for p in params) / limit_s["param_copy"] / 1e9,
            "of_copy_limit": {s: (nbytes / t / 1e9) / copy_rate for s, t in median.items()},
            "uncached_over_cached": median["uncached"] / median["cached"] if "uncached" in median else None,
            "mbridge_over_cached": median["mbridge"] / median["cached"] if "mbridge" in median else None,
            "extra_peak_bytes": {s: max(p["extra_peak_bytes"] for p in v) for s, v in passes.items() if v and cuda},
            "same_as_cached": {s: check(s) for s in prints if s != "cached" and "cached" in prints},
            "errors": errors,
        }
        Path(args.worker_out).write_text(json.dumps(doc, indent=1))
    dist.barrier()
    dist.destroy_process_group()


def _summary(run: dict) -> str:
    if "median_s" not in run:
        return f"failed: {run.get('error')}"
    med = run["median_s"]
    parts = [f"{s} {t:.3f} s" for s, t in med.items()]
    parts.append(f"copy limit {run['copy_limit_GB_per_s']:.1f} GB/s")
    return f"{run['bytes'] / 1e9:.2f} GB, {run['tensors']} tensors: " + ", ".join(parts)


def driver(args) -> int:
    import torch
    from gpu_export import _free_port, run_group, shape_values

    on_cpu = args.mode == "cpu" or args.device == "cpu"
    if not on_cpu and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return 0
    python = args.python
    if args.peer_env:
        import peer_env

        python = peer_env.ensure(args.peer_env)
    python = python or sys.executable
    dtype = "float32" if args.mode == "cpu" else "bfloat16"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if on_cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    cuda = not on_cpu
    doc = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)",
        "worker_python": python,
        "command": " ".join(sys.argv),
        "runs": [],
    }
    folder = Path(args.out or ".").resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    for c in configurations(args):
        out = folder / f".weight-sync-{args.mode}-{c['shape']}.json"
        out.unlink(missing_ok=True)
        cmd = [python, "-m", "torch.distributed.run", "--nproc_per_node", str(c["nproc"])]
        cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(Path(__file__).resolve())]
        cmd += ["--worker", "--worker-shape", c["shape"], "--layers", str(c["layers"]), "--tp", str(c["tp"])]
        cmd += ["--ep", str(c["ep"]), "--dtype", dtype, "--widths", json.dumps(c["widths"])]
        cmd += ["--repeats", str(args.repeats), "--bucket-mb", str(args.bucket_mb), "--worker-out", str(out)]
        cmd += (["--tiny"] if args.tiny else []) + (["--ours-only"] if args.ours_only else [])
        print(f"{PREFIX} {c['shape']} TP={c['tp']} EP={c['ep']}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        rc, stderr = run_group(cmd, args.timeout, env=env, echo=PREFIX)
        if out.is_file():
            run = json.loads(out.read_text())
            out.unlink()
        else:
            run = {"shape": c["shape"], "tp": c["tp"], "ep": c["ep"], "error": f"exit {rc}", "stderr_tail": stderr}
        run["process_wall_s"] = time.perf_counter() - start
        run["model"] = {**shape_values(c["shape"]), **c["widths"], "num_hidden_layers": c["layers"]}
        print(f"{PREFIX} {c['shape']}: {_summary(run)}", file=sys.stderr, flush=True)
        doc["runs"].append(run)
        if args.out:  # after every run, so that a later one killed from outside leaves the earlier ones
            Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    if not args.out:
        print(json.dumps(doc, indent=1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["cpu", "gpu"], default="cpu", help="cpu: gloo TP=2 / EP=2; gpu: one GPU")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="--mode gpu on the CPU: a dry run")
    parser.add_argument("--tiny", action="store_true", help="tiny widths (a dry run)")
    parser.add_argument("--shapes", nargs="*", default=None, help="only these shapes (llama3_8b, qwen3_moe)")
    parser.add_argument("--layers", type=int, default=None, help="Llama layers (default: 8 on cpu, 32 on gpu)")
    parser.add_argument("--moe-layers", type=int, default=None, help="Qwen3-MoE layers (default: 8 on cpu, 24 on gpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes after the warm-up")
    parser.add_argument("--bucket-mb", type=float, default=512, help="bucket size of the plan, MiB")
    parser.add_argument("--ours-only", action="store_true", help="skip mbridge")
    parser.add_argument("--python", default=None, help="interpreter of the workers (default: this one)")
    parser.add_argument("--peer-env", default=None, help="run the workers in the mbridge venv under this cache")
    parser.add_argument("--out", default=None, help="write the JSON here (else to stdout)")
    parser.add_argument("--timeout", type=float, default=1500, help="seconds per configuration")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-shape", dest="shape", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tp", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--ep", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    parser.add_argument("--widths", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
