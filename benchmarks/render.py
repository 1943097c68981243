"""Render ``docs/benchmarks.md`` from ``benchmarks/results/cpu.json`` (and ``gpu.json`` when present).

python benchmarks/render.py            # re-render from the stored results
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GIB = 2**30
GPU_SETUP = "python benchmarks/gpu_export.py --fetch-wheels benchmarks/.cache/gpu-wheels"
GPU_COMMAND = (
    "python benchmarks/gpu_export.py --wheels benchmarks/.cache/gpu-wheels --layers 32 --tp 1 2 --repeats 3 "
    "--out $OUT/gpu.json"
)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _s(x: float) -> str:
    return f"{x:.2f} s"


def _med(d: dict) -> float:
    return d["median"]


def _ok(flag: bool) -> str:
    return "met" if flag else "**missed**"


def rss_bar(nbytes: int) -> float:
    return nbytes * 1.25 + 0.5 * GIB


def goals(r: dict) -> list[tuple[str, str, str]]:
    """(goal, measured, met/missed) rows."""
    rows = []
    start = _med(r["startup"]["wall_s"]) if "startup" in r else 0.0
    for c in r.get("conversions", {}).values():
        if c["tp"] != 1 or "export" not in c:
            continue
        m = r["models"][c["model"]]
        fl = _med(c["floor"]["wall_s"])
        for step in ("import", "export"):
            ratio = (_med(c[step]["wall_s"]) - start) / fl
            rows.append(
                (f"{step} {c['model']}: (wall − startup) ≤ 1.3 × floor", f"{ratio:.2f} × floor", _ok(ratio <= 1.3))
            )
        for step in ("import", "export"):
            peak = _med(c[step]["peak_rss"])
            bar = rss_bar(m["bytes"])
            rows.append(
                (
                    f"{step} {c['model']}: peak RSS ≤ bytes × 1.25 + 0.5 GiB ({_gib(bar)})",
                    _gib(peak),
                    _ok(peak <= bar),
                )
            )
    for tp, d in r.get("live", {}).items():
        med = d["median"]
        if "mbridge" not in med:
            continue
        for op in ("load", "export"):
            speed = med["mbridge"][op] / med["ours"][op]
            rows.append((f"live {op} {tp.upper()}: ≥ 2 × faster than mbridge", f"{speed:.1f} ×", _ok(speed >= 2)))
    for d in r.get("discovery", {}).values():
        wall = _med(d["bridgectl_plugins_wall_s"])
        rows.append((f"`bridgectl plugins` with {d['plugins']} plugins ≤ 0.3 s", _s(wall), _ok(wall <= 0.3)))
        heavy = d["heavy_modules_after_plugins"]
        rows.append(
            (
                f"`bridgectl plugins` with {d['plugins']} plugins imports no torch",
                ", ".join(heavy) or "none",
                _ok("torch" not in heavy),
            )
        )
    return rows


def kernel_note(r: dict) -> str:
    start = _med(r["startup"]["wall_s"]) if "startup" in r else 0.0
    ratios = [
        (_med(c[step]["wall_s"]) - start) / _med(c["kernel_copy"]["wall_s"])
        for c in r.get("conversions", {}).values()
        if c["tp"] == 1 and "export" in c and "kernel_copy" in c
        for step in ("import", "export")
    ]
    if not ratios:
        return ""
    return (
        "The floor ratios use the user-space copy. Against the in-kernel copy of the same bytes (`sendfile`), "
        f"every conversion above is {min(ratios):.1f}–{max(ratios):.1f} × (section 1). Peak RSS counts every "
        "resident page of the process tree, file-backed ones (shared libraries) included; the anonymous part is "
        "listed in section 1."
    )


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def machine_section(r: dict) -> str:
    m = r["machine"]
    v = m["versions"]
    d = m["disk"]
    rows = [
        ["date", m["date"]],
        ["CPU", f"{m['cpu']}, {m['cores']} cores"],
        ["RAM", f"{m['ram_gib']} GiB"],
        [
            "disk",
            f"{d['device']} ({d['fstype']}, {d['mount_options'].split(',')[0]}), {d['size_gb']} GB, "
            f"{d['free_gb']} GB free; virtual disk",
        ],
        ["OS", m["os"]],
        ["Python", m["python"]],
        [
            "torch / megatron-core / transformers / safetensors",
            f"{v.get('torch')} / {v.get('megatron-core')} / {v.get('transformers')} / {v.get('safetensors')}",
        ],
        [
            "bridge-core / bridge-llama / bridge-qwen",
            f"{v.get('bridge-core')} / {v.get('bridge-llama')} / {v.get('bridge-qwen')}",
        ],
        ["mbridge (own venv, same torch/megatron-core/transformers)", str(v.get("mbridge"))],
        ["repeats (median reported)", _repeats(r)],
        ["suite wall time", f"{r.get('suite_wall_s', 0) / 60:.1f} min"],
    ]
    return table(["", ""], rows)


def conversion_section(r: dict) -> str:
    start = _med(r["startup"]["wall_s"])
    rows = []
    for c in r.get("conversions", {}).values():
        if c["tp"] != 1 or "export" not in c:
            continue
        m = r["models"][c["model"]]
        fl = _med(c["floor"]["wall_s"])
        kc = _med(c["kernel_copy"]["wall_s"]) if "kernel_copy" in c else None
        for step in ("import", "export"):
            wall = _med(c[step]["wall_s"])
            net = wall - start
            peak = _med(c[step]["peak_rss"])
            anon = c[step].get("peak_rss_anon")
            rows.append(
                [
                    f"{c['model']} ({m['dtype']}, {m['shards']} shard{'s' if m['shards'] > 1 else ''})",
                    _gb(m["bytes"]),
                    step,
                    _s(wall),
                    _s(net),
                    _s(fl),
                    f"{net / fl:.1f} ×",
                    f"{net / kc:.1f} ×" if kc else "",
                    f"{m['bytes'] / 1e9 / net:.2f}",
                    _gib(peak),
                    _gib(_med(anon)) if anon else "",
                    _gib(rss_bar(m["bytes"])),
                ]
            )
    head = [
        "model",
        "size",
        "step",
        "wall",
        "wall − startup",
        "floor",
        "ratio",
        "ratio to kernel copy",
        "GB/s (net)",
        "peak RSS (tree)",
        "of which anonymous",
        "RSS bar",
    ]
    s = r["startup"]
    return (
        f"Startup (`{s['command']}`, same run): **{_s(start)}** median "
        f"(runs {', '.join(_s(x) for x in s['wall_s']['runs'])}), peak RSS {_gib(_med(s['peak_rss']))}.\n\n"
        + table(head, rows)
    )


def floor_details(r: dict) -> str:
    rows = []
    for c in r.get("conversions", {}).values():
        if c["tp"] != 1 or "export" not in c:
            continue
        f = c["floor"]
        k = c.get("kernel_copy")
        rows.append(
            [
                c["model"],
                _s(_med(f["wall_s"])),
                _s(_med(k["wall_s"])) if k else "",
                _s(_med(f["read_s"])),
                _s(_med(f["write_s"])),
                ", ".join(_s(x) for x in f["wall_s"]["runs"]),
                ", ".join(_s(x) for x in c["import"]["wall_s"]["runs"]),
                ", ".join(_s(x) for x in c["export"]["wall_s"]["runs"]),
            ]
        )
    return table(
        [
            "model",
            "floor",
            "kernel copy",
            "of which read",
            "of which write+fsync",
            "floor runs",
            "import runs",
            "export runs",
        ],
        rows,
    )


def live_section(r: dict) -> str:
    rows = []
    for tp, d in r.get("live", {}).items():
        med, t = d["median"], d["times"]
        checks = d.get("checks", {})
        ok = all(checks.values()) if checks else None
        for op in ("load", "export"):
            ours, theirs = med["ours"][op], med["mbridge"][op]
            rows.append(
                [
                    tp.upper(),
                    op,
                    _s(ours),
                    _s(theirs),
                    f"{theirs / ours:.1f} ×",
                    ", ".join(_s(x) for x in t["ours"][op]),
                    ", ".join(_s(x) for x in t["mbridge"][op]),
                ]
            )
        rows.append([tp.upper(), "results", "", "", "", "identical" if ok else f"checks: {checks}", ""])
    model = next(iter(r.get("live", {}).values()), {}).get("hf", "")
    name = Path(model).name if model else ""
    size = r["models"].get(name, {}).get("bytes", 0)
    return (
        f"Model: `{name}` ({_gb(size)} bf16), built once per run with our provider; both sides load into and "
        "export from that same model object, alternating.\n\n"
        + table(["TP", "op", "ours", "mbridge", "mbridge / ours", "ours runs", "mbridge runs"], rows)
    )


def discovery_section(r: dict) -> str:
    rows = []
    for d in r.get("discovery", {}).values():
        rows.append(
            [
                f"{d['plugins']} ({d['loaded']} loaded)",
                f"{_med(d['import_bridge_core_in_process_s']) * 1000:.0f} ms",
                f"{_med(d['python_import_bridge_core_wall_s']) * 1000:.0f} ms",
                f"{_med(d['python_startup_wall_s']) * 1000:.0f} ms",
                f"{_med(d['plugins_in_process_s']) * 1000:.0f} ms",
                f"{_med(d['bridgectl_plugins_wall_s']) * 1000:.0f} ms",
                ", ".join(d["heavy_modules_after_plugins"]) or "none",
            ]
        )
    return table(
        [
            "plugins installed",
            "`import bridge_core` (in process)",
            "`python -c 'import bridge_core'` (wall)",
            "`python -c pass` (wall)",
            "discovery + listing (in process)",
            "`bridgectl plugins` (wall)",
            "heavy modules imported",
        ],
        rows,
    )


def scaling_section(r: dict) -> str:
    start = _med(r["startup"]["wall_s"])
    conv = r.get("conversions", {})
    rows = []
    for name in sorted({c["model"] for c in conv.values() if c["model"].startswith("toy-")}):
        m = r["models"][name]
        row = [f"{name} ({_gb(m['bytes'])})"]
        for tp in (1, 2):
            c = conv.get(f"{name}/tp{tp}")
            if c is None:
                row += ["", "", "", ""] if tp == 1 else ["", "", ""]
                continue
            fl = _med(c["floor"]["wall_s"])
            if tp == 1:
                row.append(_s(fl))
            wall = _med(c["import"]["wall_s"])
            row += [
                f"{_s(wall)} ({_s(wall - start)} net, {(wall - start) / fl:.1f} × floor)",
                f"{m['bytes'] / 1e9 / (wall - start):.2f}",
                _gib(_med(c["import"]["peak_rss"])),
            ]
        rows.append(row)
    return table(
        [
            "model",
            "floor (TP=1 run)",
            "TP=1 import wall",
            "TP=1 GB/s",
            "TP=1 peak RSS",
            "TP=2 import wall",
            "TP=2 GB/s",
            "TP=2 peak RSS (2 ranks + launcher)",
        ],
        rows,
    )


def gpu_section(gpu: dict | None) -> str:
    text = (
        "On the lent GPU machine (Python 3.12, torch 2.11 cu130, transformers 5.17; it reaches no package "
        "index, so the wheels it lacks are fetched here first and carried):\n\n"
        f"```bash\n# here, once: megatron-core 0.19.2 (cp312), mbridge 0.15.1, einops\n{GPU_SETUP}\n"
        "# on the GPU machine (2 GPUs, e.g. nvidia-h200-x2), carrying benchmarks/.cache/gpu-wheels:\n"
        f"{GPU_COMMAND}\n"
        "# back here: store $OUT/gpu.json as benchmarks/results/gpu.json, then\n"
        "python benchmarks/render.py\n```\n\n"
        "It builds an ~8B-shaped random model (Llama-3-8B widths; `--layers` sets the depth) in bf16 directly on "
        "the GPU(s) with our provider (local layer spec); `--wheels` unpacks the carried wheels into "
        "`benchmarks/.cache/gpu-wheels/site` and puts it first on the path (no pip install). It then times "
        "`export_hf_weights(model, cpu=True)` (every "
        "tensor arrives on every rank as a CPU tensor: the RL weight-sync path) against mbridge's `export_weights` "
        "+ `.cpu()` on the same model object, at TP=1 (one process) and TP=2 (`torchrun`, NCCL). The checkout's "
        "`core` and `bridge-llama` are used from the source tree (no install needed); if mbridge fails to import "
        "under megatron-core 0.19, ours runs alone and the error is recorded. Without a GPU it prints "
        '`{"skipped": ...}` and exits 0.\n'
    )
    if not gpu:
        return text + "\n_No GPU results yet._\n"
    rows = []
    for run in gpu.get("runs", []):
        med = run.get("median", {})
        ours = med.get("ours")
        theirs = med.get("mbridge")
        rows.append(
            [
                f"TP={run['tp']}",
                _gb(run.get("bytes", 0)),
                _s(ours) if ours else "",
                _s(theirs) if theirs else "",
                f"{theirs / ours:.1f} ×" if ours and theirs else "",
                f"{run['bytes'] / 1e9 / ours:.2f}" if ours else "",
                f"{run['bytes'] / 1e9 / theirs:.2f}" if theirs else "",
                run.get("checks", ""),
            ]
        )
    return (
        text + f"\nGPU: {gpu.get('gpu')} ({gpu.get('date')}; torch {gpu.get('torch')}, "
        f"megatron-core {gpu.get('megatron_core')}, mbridge {gpu.get('mbridge')})\n\n"
        + table(["TP", "size", "ours", "mbridge", "mbridge / ours", "ours GB/s", "mbridge GB/s", "checks"], rows)
    )


TRAIN_PROSE = (
    "SDPA (the default, `attention.core_attention=auto` without Transformer Engine) against the local "
    "attention on the same shapes; the limit is a bf16 `torch.matmul` measured in the same run. TFLOP/s is "
    "Megatron-LM's count (`bridge_core.training.flops`: matmuls, causal seq/2, 3 x forward). Goal on the "
    "8B layers: 450 TFLOP/s (issue 15; Megatron-Bridge with Transformer Engine: 512.7 on an H100 for "
    "Qwen3-8B); fused norm/SwiGLU/RoPE kernels are not written yet. The MoE shape (Qwen3-30B-A3B layers) runs "
    "megatron-core's experts one after another (`SequentialMLP`: no grouped GEMM without Transformer "
    "Engine), hence its 5 % of the limit: the next target. A `--toy` (CPU) run checks the script only and "
    "says nothing of a GPU."
)


def train_section(t: dict | None) -> str:
    """``results/train_throughput.json`` (``benchmarks/train_throughput.py`` on one GPU) as a table."""
    if not t or t.get("toy"):
        return "Not measured yet (`benchmarks/train_throughput.py` on a GPU)."
    m, limit = t["machine"], t["matmul"]["tflops"]
    head = (
        f"1 x {m['gpu']} ({t['date'][:16].replace('T', ' ')} UTC; torch {m['torch']}, megatron-core "
        f"{m['megatron_core']}, no Transformer Engine, bf16, the distributed optimizer, mock data, "
        f"{t['cases'][0]['iters']} steps, the last {t['cases'][0]['measured_steps']} timed). "
        f"bf16 matmul {t['matmul']['size']}^3 in the same run: **{limit:.0f} TFLOP/s**.\n\n" + TRAIN_PROSE + "\n\n"
    )
    columns = "shape | layers | seq | GBS / MBS | attention | tokens/s | TFLOP/s/GPU | of the matmul limit | peak mem"
    rows = [f"| {columns} |"]
    rows.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for c in t["cases"]:
        if c.get("error"):
            rows.append(f"| {c['shape']} | | {c['seq']} | | `{c['attention']}` | failed: {c['error'][:60]} | | | |")
            continue
        rows.append(
            f"| {c['shape']} | {c['layers']} | {c['seq']} | {c['gbs']} / {c['mbs']} | `{c['attention']}` | "
            f"{c['tokens_per_s']:,.0f} | {c['tflops_per_gpu']:.1f} | {c['tflops_per_gpu'] / limit:.0%} | "
            f"{c['peak_memory_gib']:.1f} GiB |"
        )
    return head + "\n".join(rows)


def render(r: dict, gpu: dict | None = None, train: list[dict] | None = None) -> str:
    analysis = (HERE / "analysis.md").read_text() if (HERE / "analysis.md").is_file() else ""
    parts = [
        "# Benchmarks",
        "",
        "<!-- Generated by benchmarks/render.py from benchmarks/results/*.json; edit benchmarks/analysis.md "
        "for the prose. -->",
        "",
        "Re-run everything with one command (not part of CI; about 20 minutes here, more on the first run, which "
        "builds the mbridge environment, the toys and the SmolLM2 HF folders under `.tox/bench-cache`):",
        "",
        "```bash",
        "tox -e bench                          # all sections",
        "tox -e bench -- --only live,discovery # some sections (the others keep their stored results)",
        "```",
        "",
        "## Machine",
        "",
        machine_section(r),
        "",
        "## How it is measured",
        "",
        "- Every conversion is `bridgectl import` / `bridgectl export` as a user runs it, a fresh process each time; "
        "wall time and peak RSS **summed over the process tree** (launcher and rank processes; psutil polled every "
        "20 ms) are recorded. The median of the runs is reported; all runs are listed under the tables.",
        "- **Warm cache**: the page cache cannot be dropped on these machines, so sources are read from memory; "
        "outputs are deleted and dirty pages flushed (`sync`) before each run, outside the timing.",
        "- **Floor**: read every safetensors byte of the source once and write the same bytes once to the same disk "
        "(16 MiB chunks through a user-space buffer, `fsync` per file and on the folder), in the same run, "
        "interleaved with the conversions. The same copy done inside the kernel (`sendfile`, no user-space "
        "buffer) is listed as a lower bound; a converter has to hold the bytes in memory, so the ratios use the "
        "first. "
        "Both conversions fsync what they write, as the floor does: `bridgectl import` its checkpoint (torch DCP "
        "`sync_files`), `bridgectl export` every shard, the index and the folder.",
        '- **Startup**: a bare `python -c "import torch, megatron.core"` measured in the same run; '
        "`wall − startup` is compared with the floor.",
        "- This machine is shared and noisy (the same copy varies by 2× between runs); read ratios and medians, "
        "not single numbers.",
        "",
        "## Goals",
        "",
        table(["goal", "measured", ""], [list(g) for g in goals(r)]),
        "",
        kernel_note(r),
        "",
        "## 1. Import and export against the I/O floor (TP=1)",
        "",
        conversion_section(r),
        "",
        "RSS bar = model bytes × 1.25 + 0.5 GiB. All runs:",
        "",
        floor_details(r),
        "",
        "## 2. Live load / export against mbridge",
        "",
        live_section(r),
        "",
        "## 3. Discovery",
        "",
        discovery_section(r),
        "",
        "## 4. Scaling: import time by model size and tensor parallel size",
        "",
        scaling_section(r),
        "",
        "## 5. GPU: export of an ~8B-shaped model to CPU tensors (RL weight sync)",
        "",
        gpu_section(gpu),
        "",
        "## 6. GPU: training throughput on one GPU (SDPA and local attention against the matmul limit)",
        "",
        "```bash\npython benchmarks/train_throughput.py --out $OUT/train_throughput.json   # on the GPU machine\n```",
        "",
        "\n\n".join(train_section(t) for t in train or [None]),
        "",
        analysis,
    ]
    return "\n".join(parts).rstrip() + "\n"


def _repeats(r: dict) -> str:
    live = {d.get("repeats") for d in r.get("live", {}).values()} - {None, r["repeats"]}
    return str(r["repeats"]) + (f" (live: {', '.join(map(str, sorted(live)))})" if live else "")


def write(results: dict, doc: Path) -> None:
    gpu_file = HERE / "results" / "gpu.json"
    gpu = json.loads(gpu_file.read_text()) if gpu_file.is_file() else None
    runs = [json.loads(f.read_text()) for f in sorted((HERE / "results").glob("train_throughput*.json"))]
    doc.write_text(render(results, gpu, runs))


if __name__ == "__main__":
    results = json.loads((HERE / "results" / "cpu.json").read_text())
    write(results, HERE.parent / "docs" / "benchmarks.md")
    print("rendered docs/benchmarks.md", file=sys.stderr)
