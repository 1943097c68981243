"""GPU export throughput (RL weight sync): an ~8B-shaped random bf16 model, TP=1 and TP=2, to CPU tensors.

    python benchmarks/gpu_export.py --layers 32 --tp 1 2 --repeats 3 --out benchmarks/results/gpu.json
    python benchmarks/gpu_export.py --shape qwen3_moe --layers 8 --tp 1 --out moe.json  # many small tensors

The driver (this command) starts one ``torchrun --nproc_per_node TP`` per TP size (NCCL), collects
rank 0's JSON and prints / writes the combined result. Each worker builds the model with our provider
directly on its GPU (Llama-3-8B widths by default: hidden 4096, MLP 14336, 32 heads, 8 KV groups,
vocabulary 128256, untied; ``--layers`` sets the depth; ``--shape qwen3_moe``: Qwen3-30B-A3B's layer
shapes, 128 experts of 3 tensors each per layer), fills it with random values, measures the limit (the
best pinned device-to-host copy of 1 GiB, on rank 0), then alternates ``--repeats`` times:

- ours: ``for name, t in AutoBridge.export_hf_weights(model, cpu=True)`` (every rank receives every tensor);
- ours_plan: the same with ``plan=weight_sync_plan(model)``, made once before the timing (an RL refit's
  export: nothing is planned per call);
- mbridge 0.15.1 (when it imports): ``for name, t in export_weights(model): t.cpu()``, with the local
  layer spec's norm names added to its tables, the vocabulary padding told and, for MoE, the local
  spec's expert names (``local_experts.J.linear_fc1.weight``) told as TE's (``linear_fc1.weightJ``).

Every side sees the same model object. Rank 0 prints each side's median and its share of the pinned
limit (``[gpu_export] ...`` on stderr; ``of_pinned_limit`` in the JSON). Without CUDA the driver prints
``{"skipped": ...}`` and exits 0 (``--dry-run``: the same code on the CPU, on gloo, at tiny widths, TP=1).
The module imports neither mbridge nor megatron at import time, so ours runs alone where mbridge is
missing or fails to import (its error is recorded).

Needs on the GPU machine: torch, transformers, pluggy (there already), megatron-core (the 0.19.2 wheel);
optionally mbridge 0.15.1 and einops. This checkout's ``core`` and ``plugins/bridge-llama`` are used
from the source tree when not installed. ``python benchmarks/gpu_export.py --fetch-wheels DIR``
downloads the cp312 wheels here, to carry over (that machine reaches no package index).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

LLAMA3_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
}
# architecture and model type of each shape; the HF config values come from shape_values()
SHAPES = {"llama3_8b": ("LlamaForCausalLM", "llama"), "qwen3_moe": ("Qwen3MoeForCausalLM", "qwen3_moe")}
# widths for a dry run of the same code on the CPU (``--tiny``)
TINY = {
    "llama3_8b": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
    },
    "qwen3_moe": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 512,
    },
}
CARRY_WHEELS = ["megatron-core==0.19.2", "mbridge==0.15.1", "einops"]
ROOT = Path(__file__).resolve().parent.parent


def _use_checkout() -> None:
    """Import this checkout's bridge-core, bridge-llama and bridge-qwen (installed or not) and register those
    bridges directly, so that no installed entry point (and no importlib-metadata) is needed on the GPU machine."""
    import importlib

    try:
        import bridge_core  # noqa: F401
        import bridge_llama  # noqa: F401
        import bridge_qwen  # noqa: F401
    except ImportError:
        for sub in ("core/src", "plugins/bridge-llama/src", "plugins/bridge-qwen/src"):
            sys.path.insert(0, str(ROOT / sub))
    from bridge_core.plugins.discovery import reset_registry
    from bridge_core.plugins.registry import Registry

    registry = Registry()
    for name in ("llama", "qwen"):
        package = importlib.import_module(f"bridge_{name}")
        plugin = importlib.import_module(f"bridge_{name}.plugin")
        version = getattr(package, "__version__", "0")
        registry.add_plugin(plugin, name=name, distribution=f"bridge-{name}", version=version, strict=True)
    reset_registry(registry)


# -- worker (one process per rank, under torchrun) ------------------------------------------------


def shape_values(shape: str) -> dict:
    """The HF config values of a shape (Qwen3-30B-A3B's are train_throughput.py's)."""
    if shape == "llama3_8b":
        return dict(LLAMA3_8B)
    from train_throughput import QWEN3_30B_A3B

    return dict(QWEN3_30B_A3B)


def make_hf_config(shape: str, layers: int, dtype: str = "bfloat16", tiny: bool = False, **overrides):
    """The HF config of ``shape`` with ``layers`` decoder layers (``tiny``: the dry-run widths)."""
    from transformers import AutoConfig

    architecture, model_type = SHAPES[shape]
    values = {**shape_values(shape), **(TINY[shape] if tiny else {}), **overrides, "num_hidden_layers": layers}
    theta = values.pop("rope_theta")
    try:
        config = AutoConfig.for_model(
            model_type, **values, rope_parameters={"rope_type": "default", "rope_theta": theta}
        )
    except TypeError:
        config = AutoConfig.for_model(model_type, **values, rope_theta=theta)
    config.architectures = [architecture]
    config.dtype = dtype
    return config


def _hf_config(args):
    widths = {"hidden_size": args.hidden, "intermediate_size": args.ffn}
    shape, tiny = getattr(args, "shape", "llama3_8b"), getattr(args, "tiny", False)
    return make_hf_config(shape, args.layers, tiny=tiny, **{k: v for k, v in widths.items() if v})


def _mbridge(hf_config, provider, dtype):
    import mbridge

    try:
        mb = mbridge.AutoBridge.from_config(hf_config, dtype=dtype)
    except Exception:  # its TransformerConfig may refuse settings under another megatron-core: use ours
        from mbridge.core.bridge import _MODEL_REGISTRY
        from mbridge.core.parallel_states import ParallelStates

        cls = _MODEL_REGISTRY[hf_config.model_type]
        mb = cls.__new__(cls)
        mb.hf_config, mb.extra_args, mb.dtype = hf_config, {}, dtype
        mb.mpu = ParallelStates.get_parallel_state()
        mb.config = provider
        mb.safetensor_io = None
    mb._OTHER_MAPPING = {
        **type(mb)._OTHER_MAPPING,
        "input_layernorm.weight": ["model.layers.{layer_number}.input_layernorm.weight"],
    }
    mb._MLP_MAPPING = {
        **type(mb)._MLP_MAPPING,
        "pre_mlp_layernorm.weight": ["model.layers.{layer_number}.post_attention_layernorm.weight"],
    }
    mb.make_vocab_size_divisible_by = provider.make_vocab_size_divisible_by * provider.tensor_model_parallel_size
    mb.vocab_size = provider.vocab_size
    mb.padded_vocab_size = provider.vocab_size_with_padding
    if getattr(provider, "num_moe_experts", None):
        _te_expert_names(mb)
    return mb


LOCAL_EXPERT = re.compile(r"\.mlp\.experts\.local_experts\.(\d+)\.(linear_fc[12])\.weight$")


def _te_expert_names(mb) -> None:
    """mbridge knows experts by TE's grouped-GEMM names (``mlp.experts.linear_fc1.weight7``); the local spec
    (megatron-core's SequentialMLP) has ``mlp.experts.local_experts.7.linear_fc1.weight``. Rename them in its
    map of local to global names, which every name of its ``export_weights`` passes through."""
    original = mb._weight_name_mapping_mcore_local_to_global

    def local_to_global(model, consider_ep: bool = True) -> dict[str, str]:
        out = original(model, consider_ep=consider_ep)
        per_rank = mb.config.num_moe_experts // mb.mpu.ep_size
        offset = per_rank * mb.mpu.ep_rank if consider_ep and mb.mpu.ep_size > 1 else 0
        for key, name in out.items():
            found = LOCAL_EXPERT.search(name)
            if found:
                head = name[: found.start()]
                out[key] = f"{head}.mlp.experts.{found.group(2)}.weight{int(found.group(1)) + offset}"
        return out

    mb._weight_name_mapping_mcore_local_to_global = local_to_global


def pinned_d2h(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Best GB/s of one device-to-pinned-host copy of ``nbytes`` (the limit of an export to host)."""
    import torch

    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    best = 0.0
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        host.copy_(dev, non_blocking=True)
        torch.cuda.synchronize()
        best = max(best, nbytes / (time.perf_counter() - start) / 1e9)
    del dev, host
    torch.cuda.empty_cache()
    return best


def worker(args) -> None:
    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed as dist

    _use_checkout()
    from bridge_core.conversion.auto_bridge import AutoBridge

    t0 = time.perf_counter()
    bridge = AutoBridge.from_hf_config(_hf_config(args), torch_dtype="bfloat16")
    provider = bridge.to_megatron_provider()
    provider.tensor_model_parallel_size = args.tp_size
    provider.transformer_layer_spec = "local"
    provider.perform_initialization = False
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    from live_worker import tag_tp_attributes

    tag_tp_attributes(model)
    params = [p for chunk in model for p in chunk.parameters()]
    cuda = torch.cuda.is_available()
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    gen = torch.Generator(device="cuda" if cuda else "cpu").manual_seed(1234 + dist.get_rank())
    with torch.no_grad():
        for p in params:
            p.normal_(0.0, 0.02, generator=gen)
    synchronize()
    build_s = time.perf_counter() - t0
    rank = dist.get_rank()
    local_bytes = sum(p.numel() * p.element_size() for p in params)
    limit = pinned_d2h() if cuda and rank == 0 else None

    sides, errors = ["ours", "ours_plan"], {}
    plan = bridge.weight_sync_plan(model)  # ours_plan: the RL refit's export, nothing planned per call
    mb = None
    if not args.ours_only:
        try:
            mb = _mbridge(bridge.hf_config, provider, torch.bfloat16)
            sides.append("mbridge")
        except Exception as exc:
            errors["mbridge"] = f"{type(exc).__name__}: {exc}"

    def run(side: str, fingerprint: dict | None) -> tuple[float, int, int]:
        synchronize()
        dist.barrier()
        start = time.perf_counter()
        n = nbytes = 0
        if side == "mbridge":
            it = mb.export_weights(model)
        else:
            it = bridge.export_hf_weights(model, cpu=True, plan=plan if side == "ours_plan" else None)
        for name, tensor in it:
            tensor = tensor.cpu()
            n += 1
            nbytes += tensor.numel() * tensor.element_size()
            if fingerprint is not None:
                flat = tensor.reshape(-1)[::4099].to(torch.bfloat16).double()  # mbridge keeps fp32 norms
                fingerprint[name] = (tuple(tensor.shape), round(float(flat.sum()), 3))
        synchronize()
        dist.barrier()
        return time.perf_counter() - start, n, nbytes

    times: dict[str, list[float]] = {s: [] for s in sides}
    sizes: dict[str, tuple[int, int]] = {}
    prints: dict[str, dict] = {}
    for i in range(args.repeats):
        for side in list(sides):
            try:
                fp = {} if i == 0 and rank == 0 else None
                secs, n, nbytes = run(side, fp)
            except Exception as exc:
                errors[side] = f"{type(exc).__name__}: {exc}"
                sides.remove(side)
                continue
            times[side].append(secs)
            sizes[side] = (n, nbytes)
            if fp is not None:
                prints[side] = fp
    checks = ""
    if "ours" in prints and len(prints) > 1:
        a = prints["ours"]
        said = []
        for side, b in prints.items():
            if side != "ours":
                differ = f"{len(set(a) ^ set(b))} names, {sum(1 for k in set(a) & set(b) if a[k] != b[k])} values"
                said.append(f"{side}: " + ("same names, shapes and sampled sums" if a == b else f"differ: {differ}"))
        checks = "; ".join(said)
    if rank == 0:
        median = {s: statistics.median(v) for s, v in times.items() if v}
        rate = {s: sizes[s][1] / t / 1e9 for s, t in median.items()}
        doc = {
            "shape": args.shape,
            "tp": args.tp_size,
            "layers": args.layers,
            "build_s": build_s,
            "bytes": sizes.get("ours", (0, 0))[1],
            "local_param_bytes_rank0": local_bytes,
            "tensors": {s: sizes[s][0] for s in sizes},
            "bytes_by_side": {s: sizes[s][1] for s in sizes},
            "times": {s: v for s, v in times.items() if v},
            "median": median,
            "GB_per_s": rate,
            "pinned_d2h_GB_per_s": limit,
            "of_pinned_limit": {s: r / limit for s, r in rate.items()} if limit else None,
            "checks": checks,
            "errors": errors,
        }
        Path(args.worker_out).write_text(json.dumps(doc, indent=1))
        for side, secs in median.items():
            share = f", {rate[side] / limit:.0%} of the pinned limit ({limit:.1f} GB/s)" if limit else ""
            print(
                f"[gpu_export] {args.shape} TP={args.tp_size} {side}: {secs:.3f} s, {rate[side]:.2f} GB/s{share}",
                file=sys.stderr,
                flush=True,
            )
    dist.barrier()
    dist.destroy_process_group()


# -- driver ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for dist_name in ("torch", "megatron-core", "transformers", "mbridge", "bridge-core"):
        try:
            out[dist_name] = metadata.version(dist_name)
        except metadata.PackageNotFoundError:
            out[dist_name] = None
    return out


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it (torchrun puts each worker in a session of its own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, found = [pid], []
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    for one in found:
        try:
            os.kill(one, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_group(cmd: list[str], timeout: float, env: dict | None = None, echo: str | None = None) -> tuple[int, str]:
    """Run ``cmd`` in a session of its own: ``(exit status, the last 3000 characters of its stderr)``.
    At ``timeout`` seconds, or when this process gets SIGTERM, it is killed with every process below it
    (torchrun's workers too, so that none keeps the GPU); the status is then 124. Lines of stderr starting
    with ``echo`` are passed on to ours as they come."""
    import collections
    import threading

    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    tail: collections.deque[str] = collections.deque(maxlen=200)

    def read() -> None:
        for line in proc.stderr:
            tail.append(line)
            if echo and line.startswith(echo):
                print(line, end="", file=sys.stderr, flush=True)

    def stop(signum, frame) -> None:  # we are stopped (e.g. by `timeout`): take the workers along
        _kill_tree(proc.pid)
        sys.exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        proc.wait()
        rc = 124
        tail.append(f"killed after {timeout:.0f} s\n")
    finally:
        signal.signal(signal.SIGTERM, previous)
    reader.join(timeout=5)
    return rc, "".join(tail)[-3000:]


def use_wheels(folder: str) -> Path:
    """Unpack the carried wheels into ``folder/site`` (a wheel is a zip of an installed layout) and put it
    first on the import path of this process and of the workers: no pip, no network, no system install."""
    import zipfile

    site = Path(folder).resolve() / "site"
    for wheel in sorted(Path(folder).glob("*.whl")):
        stamp = site / f".{wheel.name}.unpacked"
        if not stamp.exists():
            site.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheel) as z:
                z.extractall(site)
            stamp.write_text("")
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return site


def driver(args) -> int:
    if args.wheels:
        use_wheels(args.wheels)
    try:
        import torch
    except ImportError as exc:
        print(json.dumps({"skipped": f"torch is not installed ({exc})"}))
        return 0
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(json.dumps({"skipped": "no CUDA device"}))
        return 0
    count = torch.cuda.device_count() if torch.cuda.is_available() else max(args.tp)
    versions = _versions()
    doc = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": f"{count} x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "none (CPU test run)",
        "torch": versions["torch"],
        "megatron_core": versions["megatron-core"],
        "transformers": versions["transformers"],
        "mbridge": versions["mbridge"],
        "python": sys.version.split()[0],
        "shape": args.shape,
        "model": {
            **shape_values(args.shape),
            **(TINY[args.shape] if args.tiny else {}),
            "num_hidden_layers": args.layers,
        },
        "runs": [],
    }
    for tp in args.tp:
        if tp > count:
            doc["runs"].append({"tp": tp, "skipped": f"needs {tp} GPUs, {count} present"})
            continue
        out = Path(args.out or ".").resolve().parent / f".gpu-export-tp{tp}.json"
        out.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(tp),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            str(Path(__file__).resolve()),
            "--worker",
            "--tp-size",
            str(tp),
            "--layers",
            str(args.layers),
            "--repeats",
            str(args.repeats),
            "--worker-out",
            str(out),
        ]
        cmd += ["--hidden", str(args.hidden)] if args.hidden else []
        cmd += ["--ffn", str(args.ffn)] if args.ffn else []
        cmd += ["--ours-only"] if args.ours_only else []
        cmd += ["--shape", args.shape] + (["--tiny"] if args.tiny else [])
        print(f"[gpu_export] TP={tp}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        rc, stderr = run_group(cmd, args.timeout, echo="[gpu_export]")
        if out.is_file():
            run = json.loads(out.read_text())
            out.unlink()
        else:
            run = {"tp": tp, "error": f"exit {rc}", "stderr_tail": stderr}
        run["process_wall_s"] = time.perf_counter() - start
        doc["runs"].append(run)
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


def fetch_wheels(folder: str) -> int:
    """Download the cp312 wheels the GPU machine lacks (it reaches no package index)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--platform",
        "manylinux_2_28_x86_64",
        "--platform",
        "manylinux_2_24_x86_64",
        "--platform",
        "manylinux2014_x86_64",
        "-d",
        folder,
        *CARRY_WHEELS,
    ]
    return subprocess.run(cmd).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama3_8b", help="model shape (default llama3_8b)")
    parser.add_argument("--tiny", action="store_true", help="tiny widths of the shape (a dry run, e.g. on CPU)")
    parser.add_argument("--layers", type=int, default=32, help="decoder layers (32: Llama-3-8B)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size (default 4096)")
    parser.add_argument("--ffn", type=int, default=None, help="MLP size (default 14336)")
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2], help="tensor parallel sizes to run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ours-only", action="store_true", help="skip mbridge")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--timeout", type=float, default=1500)
    parser.add_argument("--wheels", default=None, help="folder of carried wheels to unpack and use (no pip)")
    parser.add_argument("--fetch-wheels", metavar="DIR", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU (gloo), tiny widths, TP=1")
    parser.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)  # test the logic on gloo
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tp-size", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dry_run:
        args.allow_cpu, args.tiny, args.tp, args.repeats = True, True, [1], min(args.repeats, 2)
    if args.fetch_wheels:
        return fetch_wheels(args.fetch_wheels)
    if args.worker:
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
