"""Live load / export, ours against mbridge, on the very same megatron-core model in one process.

Runs in the peer environment (``peer_env.py``), one process per rank (``torchrun`` for TP > 1;
gloo on CPU). Builds the model once with our provider (local layer spec, no random initialisation),
then alternates, ``--repeats`` times:

- ours: ``AutoBridge.load_hf_weights(model, hf_path)`` (a fresh reader each time, as mbridge opens
  its files on every call) and ``for name, t in export_hf_weights(model): ...`` (every rank receives
  every tensor, as in RL weight sync);
- mbridge 0.15.1: ``load_weights(model, hf_path)`` and ``for name, t in export_weights(model): ...``
  with the CPU arrangements: the local spec's separately named norms added to its name tables, the
  vocabulary padding told (ours pads to 128 x TP), and the ``tensor_model_parallel``/``partition_dim``
  attributes megatron-core sets only during random initialisation put on the parameters.

The first repeat also checks that both loads give bit-identical parameters and both exports the same
tensors. Rank 0 writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings


def _mbridge(hf_config, provider, dtype):
    import mbridge

    mb = mbridge.AutoBridge.from_config(hf_config, dtype=dtype)
    # the local layer spec names the norms as modules of their own (TE fuses them into the linears)
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
    return mb


def tag_tp_attributes(chunks) -> None:
    """Put the TP attributes megatron-core sets only during random initialisation (mbridge reads them)."""
    from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes

    from bridge_core.conversion.params import split_dims, unwrap

    for chunk in chunks:
        chunk = unwrap(chunk)
        dims = split_dims(chunk)
        for param in chunk.parameters():
            dim = dims[id(param)]
            if dim is not None and not hasattr(param, "tensor_model_parallel"):
                set_tensor_model_parallel_attributes(param, True, dim, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hf", required=True)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sides", default="ours,mbridge")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import torch
    import torch.distributed as dist

    from bridge_core.conversion.auto_bridge import AutoBridge

    sides = args.sides.split(",")
    t0 = time.perf_counter()
    bridge = AutoBridge.from_hf_pretrained(args.hf)
    provider = bridge.to_megatron_provider()
    provider.tensor_model_parallel_size = args.tp
    provider.perform_initialization = False
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    tag_tp_attributes(model)
    build_s = time.perf_counter() - t0
    rank = dist.get_rank()
    mb = _mbridge(bridge.hf_config, provider, provider.params_dtype) if "mbridge" in sides else None
    params = [p for chunk in model for p in chunk.parameters()]

    def sync() -> None:
        dist.barrier()

    def load(side: str) -> float:
        with torch.no_grad():  # scramble so that every load has to fill every parameter
            for p in params:
                p.zero_()
        sync()
        start = time.perf_counter()
        if side == "ours":
            bridge.load_hf_weights(model, args.hf)
        else:
            mb.load_weights(model, args.hf)
        sync()
        return time.perf_counter() - start

    def export(side: str, keep: dict | None = None) -> tuple[float, int, int]:
        sync()
        start = time.perf_counter()
        n = nbytes = 0
        it = bridge.export_hf_weights(model, cpu=True) if side == "ours" else mb.export_weights(model)
        for name, tensor in it:
            tensor = tensor.cpu()
            n += 1
            nbytes += tensor.numel() * tensor.element_size()
            if keep is not None:
                keep[name] = tensor.clone()
        sync()
        return time.perf_counter() - start, n, nbytes

    times: dict[str, dict[str, list[float]]] = {s: {"load": [], "export": []} for s in sides}
    checks: dict[str, object] = {}
    snapshot = None
    for i in range(args.repeats):
        for side in sides:
            times[side]["load"].append(load(side))
            if i == 0 and len(sides) > 1:
                if snapshot is None:
                    snapshot = [p.detach().clone() for p in params]
                else:
                    same = all(torch.equal(a, b) for a, b in zip(snapshot, params))
                    flags = [None] * dist.get_world_size()
                    dist.all_gather_object(flags, same)
                    checks["loads_bit_identical"] = all(flags)
    snapshot = None
    exported: dict[str, dict] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for i in range(args.repeats):
        for side in sides:
            keep = {} if (i == 0 and len(sides) > 1 and rank == 0) else None
            secs, n, nbytes = export(side, keep)
            times[side]["export"].append(secs)
            sizes[side] = (n, nbytes)
            if keep is not None:
                exported[side] = keep
        if i == 0 and rank == 0 and len(exported) > 1:
            a, b = exported.values()
            checks["exports_same_names"] = sorted(a) == sorted(b)
            checks["exports_bit_identical"] = sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
            exported.clear()
    if rank == 0:
        doc = {
            "hf": args.hf,
            "tp": args.tp,
            "repeats": args.repeats,
            "build_s": build_s,
            "threads": torch.get_num_threads(),
            "tensors_exported": {s: sizes[s][0] for s in sides},
            "bytes_exported": {s: sizes[s][1] for s in sides},
            "times": times,
            "median": {s: {k: statistics.median(v) for k, v in d.items()} for s, d in times.items()},
            "checks": checks,
        }
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=2)
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":
    main()
