"""Training throughput on one GPU: bridge-core's trainer on Llama shapes, SDPA vs local core attention.

    python benchmarks/train_throughput.py --out results.json        # one GPU, about 3-5 minutes on an H200
    python benchmarks/train_throughput.py --toy --out toy.json      # CPU, a 2-layer toy, seconds

Cases (random initialisation, megatron-core's mock documents, bf16 on GPU, fp32 on CPU, the distributed
optimizer, no checkpoints), each with ``attention.core_attention`` ``sdpa`` and ``local``:

- ``llama3_8b_layers``: Llama-3-8B layer shapes (hidden 4096, MLP 14336, 32 heads, 8 KV groups,
  vocabulary 128256, untied), ``--layers-8b`` layers (default 8), seq 4096, micro-batch 1, global 8;
- ``llama32_1b``: Llama-3.2-1B shapes (16 layers, hidden 2048, MLP 8192, 32 heads, 8 KV groups,
  tied embeddings), seq 2048, micro-batch 2, global 16;
- ``qwen3_30b_a3b_layers``: Qwen3-30B-A3B layer shapes (128 experts, top-8), ``--layers-moe`` layers
  (default 4), seq 4096, micro-batch 1, global 8, ``sdpa`` only (megatron-core's experts run one by one
  without Transformer Engine's grouped GEMM);
- ``llama3_8b_lora16`` (``--peft``): the full Llama-3-8B (32 layers) with LoRA rank 16, alpha 32 on
  linear_qkv, linear_proj, linear_fc1, linear_fc2, seq 2048, micro-batch 1, global 8, ``sdpa``; its base is
  a random bf16 HF folder written first (PEFT needs a base), and its FLOPs count the frozen matmuls 2x.

Per case: tokens/s, model TFLOP/s per GPU (``bridge_core.training.flops``: Megatron-LM's count, 3x
forward), the fraction of the measured matmul rate, peak memory (CUDA allocations), the last loss, over
the steps after ``--warmup``. Also measured in the same run: a bf16 ``torch.matmul`` of
``--matmul-size``^3 (the physical limit on this GPU). Each case runs in its own process (a timeout or
an out-of-memory error is recorded, the next case still runs); the JSON goes to stdout and ``--out``.

Needs torch, transformers, pluggy and megatron-core (with its compiled dataset helpers); this checkout's
``core`` and ``plugins/bridge-llama`` are used from the source tree when they are not installed. The
lent H200 image has no megatron-core: carry its cp312 wheel (``benchmarks/gpu_export.py --fetch-wheels
DIR`` downloads it) and install it with ``pip install --no-deps --target``, as for ``gpu_export.py``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gpu_export import LLAMA3_8B  # the same Llama-3-8B widths as the export benchmark

ROOT = Path(__file__).resolve().parent.parent
MARK = "TRAIN_THROUGHPUT_RESULT "

LLAMA32_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}
# Qwen3-30B-A3B's layer shapes (128 experts, top-8, no shared expert); megatron-core's experts without
# Transformer Engine (no grouped GEMM): its SequentialMLP runs the experts one after another
QWEN3_30B_A3B = {
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "moe_intermediate_size": 768,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "norm_topk_prob": True,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
TOY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}


def cases(args: argparse.Namespace) -> list[dict]:
    """(shape, HF config values, seq, micro, global batch) x core attention."""
    llama = ("LlamaForCausalLM", "llama")
    if args.toy:
        shapes = [("toy", llama, TOY, 64, 2, 4, args.attention)]
    else:
        shapes = [
            ("llama3_8b_layers", llama, {**LLAMA3_8B, "num_hidden_layers": args.layers_8b}, 4096, 1, 8, args.attention),
            ("llama32_1b", llama, LLAMA32_1B, 2048, 2, 16, args.attention),
        ]
        if args.layers_moe:
            moe = {**QWEN3_30B_A3B, "num_hidden_layers": args.layers_moe}
            shapes.append(("qwen3_30b_a3b_layers", ("Qwen3MoeForCausalLM", "qwen3_moe"), moe, 4096, 1, 8, ["sdpa"]))
    out = [
        {
            "shape": s,
            "architecture": arch,
            "hf_config": {"model_type": model_type, **c},
            "seq": seq,
            "mbs": mbs,
            "gbs": gbs,
            "attention": a,
            "iters": args.iters,
        }
        for s, (arch, model_type), c, seq, mbs, gbs, attentions in shapes
        for a in attentions
    ]
    if args.fused:
        out += [{**c, "fused": True} for c in out]
    if args.peft:
        config = {"model_type": "llama", **(TOY if args.toy else {**LLAMA3_8B, "num_hidden_layers": 32})}
        seq, gbs = (64, 4) if args.toy else (2048, 8)
        out.append(
            {
                "shape": "toy_lora16" if args.toy else "llama3_8b_lora16",
                "architecture": "LlamaForCausalLM",
                "hf_config": config,
                "seq": seq,
                "mbs": 1,
                "gbs": gbs,
                "attention": "sdpa",
                "iters": args.iters,
                "peft": {"scheme": "lora", "rank": 16, "alpha": 32.0},
            }
        )
    if args.shapes:
        out = [c for c in out if c["shape"] in args.shapes]
    base = list(out)
    for variant in args.variant:
        name, _, settings = variant.partition(":")
        overrides = dict(item.split("=", 1) for item in settings.split(",") if item)
        fused = overrides.pop("fused", "false").lower() == "true"
        out += [{**c, "variant": name, "overrides": overrides, "fused": fused} for c in base if not c.get("fused")]
    if args.variants_only:
        out = [c for c in out if "variant" in c]
    return out


def random_hf_folder(architecture: str, values: dict, folder: Path) -> Path:
    """An HF folder of ``values``' model with random bf16 weights (std 0.02), written tensor by tensor
    from the meta-device model's names and shapes (drawn on the GPU where there is one)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(values)
    config = AutoConfig.for_model(values.pop("model_type"), architectures=[architecture], dtype="bfloat16", **values)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device).manual_seed(0)
    index, shard, size, n = {}, {}, 0, 0
    for name, meta in model.state_dict().items():
        if "norm" in name:
            tensor = torch.ones(meta.shape, dtype=torch.bfloat16)
        else:
            tensor = (torch.randn(meta.shape, generator=generator, device=device) * 0.02).to(torch.bfloat16).cpu()
        shard[name] = tensor
        size += tensor.numel() * 2
        if size > 4 * 2**30:
            n += 1
            save_file(shard, str(folder / f"model-{n:05d}.safetensors"))
            index.update({k: f"model-{n:05d}.safetensors" for k in shard})
            shard, size = {}, 0
    if shard:
        n += 1
        save_file(shard, str(folder / f"model-{n:05d}.safetensors"))
        index.update({k: f"model-{n:05d}.safetensors" for k in shard})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    config.save_pretrained(folder)
    return folder


# -- worker (one process per case) ------------------------------------------------------------------


def _use_checkout() -> None:
    """This checkout's bridge-core, bridge-llama and bridge-qwen (installed or not), only they registered."""
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


def run_case(case: dict, warmup: int) -> dict:
    """Train one case in this process; the summary of its steps after ``warmup``."""
    _use_checkout()
    import torch

    from bridge_core.training.config import (
        AttentionConfig,
        CheckpointConfig,
        PeftConfig,
        SchedulerConfig,
        TrainingConfig,
        TrainLoopConfig,
        _parse_literal,
        set_value,
    )
    from bridge_core.training.recipe import ModelSpec, Recipe, SizedFor
    from bridge_core.training.trainer import train

    config = TrainingConfig(
        # megatron-core's local spec, so that sdpa/local compare the core attention alone (and Transformer
        # Engine, where installed, is not picked by "auto")
        model={"transformer_layer_spec": "local"},
        scheduler=SchedulerConfig(style="constant", lr_warmup_iters=1),
        train=TrainLoopConfig(
            iters=case["iters"],
            global_batch_size=case["gbs"],
            micro_batch_size=case["mbs"],
            seq_length=case["seq"],
            eval_interval=None,
        ),
        attention=AttentionConfig(core_attention=case["attention"]),
        checkpoint=CheckpointConfig(save=None, save_interval=None),
    )
    if case.get("fused"):
        _fused_kernels(config)
    for key, value in case.get("overrides", {}).items():  # --variant: checked as `bridgectl train` checks them
        set_value(config, key, _parse_literal(value))
    model = ModelSpec(case["architecture"], case["hf_config"])
    base = None
    if case.get("peft"):
        import tempfile

        config.peft = PeftConfig(**case["peft"])
        config.precision.dtype = "bf16" if torch.cuda.is_available() else "fp32"
        folder = Path(os.environ.get("BENCH_BASE_DIR") or tempfile.mkdtemp(prefix="bench-base-")) / case["shape"]
        started = time.perf_counter()
        base = (
            folder
            if (folder / "config.json").is_file()
            else random_hf_folder(case["architecture"], case["hf_config"], folder)
        )
        print(f"base HF folder {base} ready in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    kind = "peft" if base is not None else "pretrain"
    recipe = Recipe("train_throughput", "bench", kind, model, config, SizedFor(gpus=1))
    result = train(recipe, hf_model=base)
    steps = result.records[warmup:] or result.records[-1:]
    step_time = statistics.median(r["step_time_s"] for r in steps)
    tokens = case["gbs"] * case["seq"]
    tflops = [r["tflops_per_gpu"] for r in steps if r["tflops_per_gpu"] is not None]
    out = {
        "measured_steps": len(steps),
        "step_time_s": step_time,
        "tokens_per_s": tokens / step_time,
        "tflops_per_gpu": statistics.median(tflops) if tflops else None,
        "peak_memory_gib": max(r["peak_memory_gib"] for r in result.records),
        "losses": [round(r["loss"], 4) for r in result.records],
    }
    if torch.cuda.is_available():
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return out


def _fused_kernels(config) -> None:
    """Experiment: megatron-core's torch.compile'd bias-SwiGLU and bias-dropout-add, and a compiled RoPE
    (the same as ``bridgectl train ... model.bias_activation_fusion=true model.bias_dropout_fusion=true
    attention.compiled_rope=true``)."""
    config.model.update(bias_activation_fusion=True, bias_dropout_fusion=True)
    config.attention.compiled_rope = True


def matmul_tflops(size: int, repeats: int = 20) -> dict:
    """bf16 ``torch.matmul`` of ``size``^3 on the GPU (fp32 on CPU): 2 size^3 FLOPs per product."""
    import torch

    cuda = torch.cuda.is_available()
    dtype, device = (torch.bfloat16, "cuda") if cuda else (torch.float32, "cpu")
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    for _ in range(3):
        torch.matmul(a, b)
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeats
    return {"size": size, "dtype": str(dtype).replace("torch.", ""), "tflops": 2 * size**3 / seconds / 1e12}


def worker(spec: dict) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        if spec["kind"] == "matmul":
            return {**matmul_tflops(spec["size"]), "machine": machine()}
        return run_case(spec["case"], spec["warmup"])
    except Exception as exc:  # recorded per case; the driver goes on with the next one
        text = " ".join(str(exc).split())
        return {"error": f"{type(exc).__name__}: {text[:500]}"}


# -- driver -----------------------------------------------------------------------------------------


def _spawn(spec: dict, timeout: float) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"worker exit {proc.returncode}: {' | '.join(tail)[-800:]}"}
    out = json.loads(lines[-1][len(MARK) :])
    out["wall_s"] = round(time.perf_counter() - started, 1)
    return out


def machine() -> dict:
    import torch

    info = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__}
    try:
        import megatron.core

        info["megatron_core"] = megatron.core.__version__
    except Exception as exc:
        info["megatron_core"] = f"unavailable: {exc}"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    else:
        info["gpu"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the JSON here too")
    parser.add_argument("--toy", action="store_true", help="a 2-layer toy on the CPU (a quick check of the script)")
    parser.add_argument("--layers-8b", type=int, default=8, help="Llama-3-8B layers to train (default 8)")
    parser.add_argument("--layers-moe", type=int, default=4, help="Qwen3-30B-A3B layers (default 4; 0: none)")
    parser.add_argument("--iters", type=int, default=8, help="training steps per case (default 8)")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the figures (default 3)")
    parser.add_argument("--fused", action="store_true", help="experiment: each case also with fused kernels")
    parser.add_argument("--peft", action="store_true", help="also the LoRA r16 case on the full Llama-3-8B")
    parser.add_argument("--only-peft", action="store_true", help="the LoRA case alone (implies --peft)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="experiment: each case again with these overrides (e.g. 'ce:model.cross_entropy_loss_fusion=true,"
        "model.cross_entropy_fusion_impl=native'; 'fused=true' adds --fused's kernels)",
    )
    parser.add_argument("--variants-only", action="store_true", help="skip the cases without a --variant")
    parser.add_argument("--shapes", nargs="+", default=None, help="run only these shapes")
    parser.add_argument("--attention", nargs="+", default=["sdpa", "local"], choices=["sdpa", "local", "auto"])
    parser.add_argument("--matmul-size", type=int, default=None, help="default 8192 (GPU), 256 (--toy)")
    parser.add_argument("--case-timeout", type=float, default=150.0, help="seconds per case (default 150)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(MARK + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    args.peft = args.peft or args.only_peft
    if args.warmup >= args.iters:
        parser.error(f"--warmup {args.warmup} must be below --iters {args.iters}")
    import torch  # no CUDA context here: each case's process has the GPU to itself

    if not args.toy and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU, or pass --toy for the CPU check")
    started = time.perf_counter()
    size = args.matmul_size or (256 if args.toy else 8192)
    matmul = _spawn({"kind": "matmul", "size": size}, args.case_timeout)
    print(f"matmul {size}^3: {matmul.get('tflops', matmul.get('error'))} TFLOP/s", file=sys.stderr, flush=True)
    results = []
    for case in cases(args):
        if args.only_peft and not case.get("peft"):
            continue
        got = _spawn({"kind": "train", "case": case, "warmup": args.warmup}, args.case_timeout)
        row = {k: v for k, v in case.items() if k != "hf_config"}
        row["fused"] = bool(case.get("fused"))
        row["layers"] = case["hf_config"]["num_hidden_layers"]
        row.update(got)
        if row.get("tflops_per_gpu") and matmul.get("tflops"):
            row["fraction_of_matmul"] = row["tflops_per_gpu"] / matmul["tflops"]
        results.append(row)
        summary = got.get("error") or (
            f"{got['tokens_per_s']:,.0f} tok/s, {got['tflops_per_gpu']:.4g} TFLOP/s/GPU, "
            f"{got['peak_memory_gib']:.1f} GiB"
        )
        label = f"{case['shape']} {case['attention']}{' fused' if case.get('fused') else ''} {case.get('variant', '')}"
        print(f"{label}: {summary}", file=sys.stderr, flush=True)
    doc = {
        "benchmark": "train_throughput",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "toy": args.toy,
        "machine": matmul.pop("machine", None),
        "matmul": matmul,
        "cases": results,
        "flops_convention": "Megatron-LM num_floating_point_operations: matmuls, causal seq/2, 3x forward",
        "wall_s": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0 if all("error" not in r for r in results) and "error" not in matmul else 1


if __name__ == "__main__":
    sys.exit(main())
