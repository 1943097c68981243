"""RL refit time with and without the weight-sync plan: a full export pass giving every rank every tensor.

    python benchmarks/weight_sync.py --mode cpu --out benchmarks/results/weight_sync_cpu.json
    python benchmarks/weight_sync.py --mode gpu --out benchmarks/results/weight_sync_gpu.json

The driver (this command) starts one ``torchrun`` per configuration and writes rank 0's JSON:

- ``cpu``: gloo, CUDA hidden, TP=2, a small Llama shape (hidden 512, MLP 1536, 8 heads, 4 KV groups,
  8 layers, vocabulary 32000, fp32);
- ``gpu`` (skipped without CUDA): NCCL, TP=1, Llama-3-8B shapes in bf16 (``--layers`` sets the depth).

Each worker builds the model with our provider, fills it with random values, times
``AutoBridge.weight_sync_plan`` (once per training run in practice), then alternates ``--repeats``
times, on the same model object: ``uncached`` (``export_hf_weights(model, cpu=True)``, which plans
every call), ``cached`` (``export_hf_weights(model, cpu=True, plan=plan)``), ``buckets``
(``export_weight_buckets(model, plan, cpu=True)``) and, when it imports, mbridge 0.15.1's
``export_weights(model)`` (its error is recorded otherwise). Each pass records its total time and the
time to its first tensor (its first bucket, for ``buckets``; the planning cost shows there). The first
repeat checks that every side yields the same names, shapes and sampled sums. ``--mode gpu`` without
CUDA prints ``{"skipped": ...}``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMALL = {"hidden": 512, "ffn": 1536, "heads": 8, "kv": 4, "layers": 8, "vocab": 32000}


def _hf_config(args):
    sys.path.insert(0, str(HERE))
    from gpu_export import LLAMA3_8B
    from transformers import LlamaConfig

    values = dict(LLAMA3_8B)
    if args.mode == "cpu":
        values.update(
            hidden_size=SMALL["hidden"],
            intermediate_size=SMALL["ffn"],
            num_attention_heads=SMALL["heads"],
            num_key_value_heads=SMALL["kv"],
            vocab_size=SMALL["vocab"],
        )
    values["num_hidden_layers"] = SMALL["layers"] if args.mode == "cpu" and not args.layers else args.layers or 32
    theta = values.pop("rope_theta")
    try:
        config = LlamaConfig(**values, rope_parameters={"rope_type": "default", "rope_theta": theta})
    except TypeError:
        config = LlamaConfig(**values, rope_theta=theta)
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = "float32" if args.mode == "cpu" else "bfloat16"
    return config


def worker(args) -> None:
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(HERE))
    import torch
    import torch.distributed as dist
    from gpu_export import _mbridge, _use_checkout

    _use_checkout()
    from bridge_core.conversion.auto_bridge import AutoBridge

    dtype = "float32" if args.mode == "cpu" else "bfloat16"
    bridge = AutoBridge.from_hf_config(_hf_config(args), torch_dtype=dtype)
    provider = bridge.to_megatron_provider()
    provider.tensor_model_parallel_size = args.tp
    provider.transformer_layer_spec = "local"
    provider.perform_initialization = False
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    from live_worker import tag_tp_attributes

    tag_tp_attributes(model)
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    gen = torch.Generator(device="cuda" if cuda else "cpu").manual_seed(1234 + dist.get_rank())
    with torch.no_grad():
        for p in (p for chunk in model for p in chunk.parameters()):
            p.normal_(0.0, 0.02, generator=gen)
    rank = dist.get_rank()

    plan_s = []
    for _ in range(args.repeats):
        sync()
        dist.barrier()
        start = time.perf_counter()
        plan = bridge.weight_sync_plan(model, bucket_bytes=args.bucket_mb << 20)
        plan_s.append(time.perf_counter() - start)

    sides = {
        "uncached": lambda: bridge.export_hf_weights(model, cpu=True),
        "cached": lambda: bridge.export_hf_weights(model, cpu=True, plan=plan),
        "buckets": lambda: (item for bucket in bridge.export_weight_buckets(model, plan, cpu=True) for item in bucket),
    }
    errors: dict[str, str] = {}
    if not args.ours_only:
        try:
            mb = _mbridge(bridge.hf_config, provider, getattr(torch, dtype))
            sides["mbridge"] = lambda: mb.export_weights(model)
        except Exception as exc:
            errors["mbridge"] = f"{type(exc).__name__}: {exc}"

    def run(side: str, prints: dict | None) -> tuple[float, float, int]:
        sync()
        dist.barrier()
        start = time.perf_counter()
        first, nbytes = None, 0
        for name, tensor in sides[side]():
            tensor = tensor.cpu()
            first = time.perf_counter() - start if first is None else first
            nbytes += tensor.numel() * tensor.element_size()
            if prints is not None:
                flat = tensor.reshape(-1)[::4099].double()
                prints[name] = (tuple(tensor.shape), round(float(flat.sum()), 4))
        sync()
        dist.barrier()
        return time.perf_counter() - start, first or 0.0, nbytes

    times: dict[str, list[float]] = {s: [] for s in sides}
    firsts: dict[str, list[float]] = {s: [] for s in sides}
    prints: dict[str, dict] = {}
    nbytes = 0
    for i in range(args.repeats):
        for side in list(sides):
            fp = {} if i == 0 else None
            try:
                secs, first, nbytes_side = run(side, fp)
            except Exception as exc:
                errors[side] = f"{type(exc).__name__}: {exc}"
                del sides[side]
                continue
            times[side].append(secs)
            firsts[side].append(first)
            nbytes = nbytes_side if side == "uncached" else nbytes
            if fp is not None:
                prints[side] = fp
    same = {s: prints[s] == prints["uncached"] for s in prints if s != "uncached"}
    if rank == 0:
        med = {s: statistics.median(v) for s, v in times.items() if v}
        doc = {
            "mode": args.mode,
            "tp": args.tp,
            "world": dist.get_world_size(),
            "backend": dist.get_backend(),
            "bytes": nbytes,
            "tensors": len(plan.tensors),
            "buckets": len(plan.buckets),
            "bucket_bytes": plan.bucket_bytes,
            "weight_sync_plan_s": plan_s,
            "times": {s: v for s, v in times.items() if v},
            "median_s": med,
            "median_first_item_s": {s: statistics.median(v) for s, v in firsts.items() if v},
            "gb_per_s": {s: nbytes / t / 1e9 for s, t in med.items()},
            "same_as_uncached": same,
            "errors": errors,
        }
        Path(args.worker_out).write_text(json.dumps(doc, indent=1))
    dist.barrier()
    dist.destroy_process_group()


def driver(args) -> int:
    sys.path.insert(0, str(HERE))
    import torch
    from gpu_export import _free_port, _versions

    if args.mode == "gpu" and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return 0
    tp = args.tp or (2 if args.mode == "cpu" else 1)
    out = Path(args.out or ".").resolve().parent / f".weight-sync-{args.mode}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(tp)]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(Path(__file__).resolve())]
    cmd += ["--worker", "--mode", args.mode, "--tp", str(tp), "--repeats", str(args.repeats)]
    cmd += ["--bucket-mb", str(args.bucket_mb), "--worker-out", str(out)]
    cmd += ["--layers", str(args.layers)] if args.layers else []
    cmd += ["--ours-only"] if args.ours_only else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if args.mode == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    print(f"[weight_sync] {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    if out.is_file():
        run = json.loads(out.read_text())
        out.unlink()
    else:
        run = {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:]}
    versions = _versions()
    doc = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(0) if args.mode == "gpu" else f"CPU ({os.cpu_count()} cores)",
        "versions": versions,
        "model": SMALL if args.mode == "cpu" else {"llama3_8b_layers": args.layers or 32},
        "command": " ".join(sys.argv),
        "run": run,
    }
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--tp", type=int, default=None, help="tensor parallel size (default: 2 on cpu, 1 on gpu)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: 8 on cpu, 32 on gpu)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bucket-mb", type=int, default=512, help="bucket size of the plan, MiB")
    parser.add_argument("--ours-only", action="store_true", help="skip mbridge")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--timeout", type=float, default=1500)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
