"""``bridgectl plan``: what each rank of a TP/PP/EP layout would hold and read, from config.json alone."""

from __future__ import annotations

import argparse
import json

from bridge_core.cli.common import DTYPES, add_accept_config_arg, add_parallel_args, parallelism


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hf-model", required=True, help="HF folder (only its config.json is read)")
    parser.add_argument("--torch-dtype", choices=DTYPES, default=None, help="parameter dtype (default: the config's)")
    parser.add_argument("--tensors", action="store_true", help="also every Megatron parameter and its HF tensors")
    parser.add_argument("--json", action="store_true", help="the plan as JSON")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow models that need remote code")
    add_accept_config_arg(parser)
    add_parallel_args(parser)


def _gib(n: int) -> str:
    return f"{n / 2**30:,.2f} GiB"


def _groups(doc: dict) -> list[tuple[dict, list[str]]]:
    """Ranks with identical figures, together: (figures, ["tp,pp,ep", ...])."""
    groups: dict[tuple, tuple[dict, list[str]]] = {}
    for r in doc["ranks"]:
        key = (r["params"], r["bytes"], r["read_bytes"], r["largest_param_bytes"])
        groups.setdefault(key, (r, []))[1].append(f"{r['tp_rank']},{r['pp_rank']},{r['ep_rank']}")
    return list(groups.values())


def run(args: argparse.Namespace) -> int:
    from bridge_core.progress import LOADING_LIBRARIES, stage

    parallel = parallelism(args)
    if not args.json:  # stdout is the JSON document alone
        stage("plan", LOADING_LIBRARIES)
    from bridge_core.conversion.auto_bridge import AutoBridge
    from bridge_core.conversion.layout_plan import plan_layout
    from bridge_core.model.config_translation import parse_dtype

    bridge = AutoBridge.from_hf_pretrained(
        args.hf_model, trust_remote_code=args.trust_remote_code, accept_config=args.accept_config
    )
    plan = plan_layout(bridge, parallel, parse_dtype(args.torch_dtype) if args.torch_dtype else None)
    doc = plan.to_dict()
    if args.tensors:
        doc["tensors"] = [
            {"megatron": p.name, "shape": list(p.shape), "dtype": str(p.dtype).replace("torch.", ""),
             "split_dim": p.tp_dim, "mapping": p.mapping, "hf": list(p.hf_names)}
            for p in plan.params
        ]
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    p = doc["parallel"]
    print(
        f"plan: {doc['architecture']}, {doc['total_params'] / 1e9:,.3f}B parameters at TP={p['tp']} PP={p['pp']} "
        f"EP={p['ep']} ETP={p['etp']}: {len(doc['ranks'])} model-parallel ranks (from config.json; no weight read)"
    )
    print(f"{'RANKS (tp,pp,ep)':<28} {'PARAMS':>10} {'HOLDS':>12} {'READS':>12} {'LARGEST':>10}")
    for figures, ranks in _groups(doc):
        names = " ".join(ranks) if len(ranks) <= 3 else f"{ranks[0]} ... {ranks[-1]} ({len(ranks)} ranks)"
        print(
            f"{names:<28} {figures['params'] / 1e9:>9.3f}B {_gib(figures['bytes']):>12} "
            f"{_gib(figures['read_bytes']):>12} {_gib(figures['largest_param_bytes']):>10}"
        )
    busiest = plan.busiest()
    print(
        f"plan: the busiest rank (tp {busiest.tp_rank}, pp {busiest.pp_rank}, ep {busiest.ep_rank}) holds "
        f"{_gib(busiest.nbytes)} of parameters"
    )
    for t in doc.get("tensors", []):
        split = "-" if t["split_dim"] is None else f"dim {t['split_dim']}"
        hf = ", ".join(t["hf"])
        print(f"  {t['megatron']} {tuple(t['shape'])} {t['dtype']} split {split} {t['mapping']} <- {hf}")
    return 0
