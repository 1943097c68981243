"""Conversion without building the model: the streamed checkpoint is the live one, bit for bit, and
memory stays flat while the model grows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import _test_bridges
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from bridge_core.checkpoints.megatron_checkpoint import load_megatron_checkpoint
from bridge_core.conversion.stream_export import stream_export
from bridge_core.conversion.workflows import export_checkpoint
from bridge_core.plugins.discovery import reset_registry
from bridge_core.plugins.registry import Registry
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.runtime.parallelism import Parallelism
from bridge_core.testing.compare import compare_hf_weights
from bridge_core.testing.launch import torchrun
from bridge_core.testing.toy import ToyModel, build_toy

HERE = Path(__file__).parent
LLAMA = {
    "model_type": "llama",
    "hidden_size": 96,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "num_hidden_layers": 4,
    "intermediate_size": 160,
    "vocab_size": 1000,
    "max_position_embeddings": 256,
}
MOE = {
    "model_type": "qwen3_moe",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 24,
    "num_hidden_layers": 2,
    "intermediate_size": 96,
    "moe_intermediate_size": 40,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "norm_topk_prob": True,
    "vocab_size": 515,
    "max_position_embeddings": 256,
}
# (name, architecture, config, dtype, layout): padded vocabularies (1000 and 999 rows at TP=2), a tied bf16
# model, pipeline stages, and stacked HF experts split over expert-parallel ranks.
CASES = [
    ("llama_tp2", "LlamaForCausalLM", LLAMA, "float32", {"tp": 2}),
    ("tied_pp2", "LlamaForCausalLM", {**LLAMA, "tie_word_embeddings": True, "vocab_size": 999}, "bfloat16", {"pp": 2}),
    ("moe_ep2", "Qwen3MoeForCausalLM", MOE, "float32", {"ep": 2}),
]


@pytest.fixture(autouse=True)
def test_plugin():
    registry = Registry()
    registry.add_plugin(_test_bridges, name="test-bridges", strict=True)
    reset_registry(registry)
    yield
    destroy_model_parallel()
    reset_registry()


def stored_tensors(weights: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a torch_dist folder, whole, read with torch's own reader."""
    metadata = FileSystemReader(weights).read_metadata()
    state = {
        key: torch.empty(m.size, dtype=m.properties.dtype)
        for key, m in metadata.state_dict_metadata.items()
        if isinstance(m, TensorStorageMetadata)
    }
    dcp.load(state, storage_reader=FileSystemReader(weights), no_dist=True)
    return state


def documents(path: Path) -> dict:
    run = json.loads((path / "run_config.json").read_text())
    provenance = json.loads((path / "provenance.json").read_text())
    return {"run": run, "provenance": {k: v for k, v in provenance.items() if k != "source"}}


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict[str, tuple[Path, Path, Path]]:
    """Each case imported through the model at its layout and streamed by 2 workers, in one launch."""
    work = tmp_path_factory.mktemp("stream")
    specs, out = [], {}
    for name, arch, config, dtype, layout in CASES:
        hf = build_toy(ToyModel(arch, config, dtype=dtype), work / f"{name}-hf")
        if "num_experts" in config:  # on disk as the test plugin reads them: one tensor per projection
            hf = _test_bridges.stack_experts(hf, work / f"{name}-stacked", config["num_experts"])
        (hf / "tokenizer.json").write_text('{"version": "1.0"}')
        live, streamed = work / f"{name}-live", work / f"{name}-stream"
        specs.append({"name": name, "hf": str(hf), "live": str(live), "stream": str(streamed), **layout})
        out[name] = (hf, live, streamed)
    (work / "cases.json").write_text(json.dumps(specs))
    proc = torchrun([str(HERE / "_stream_dist_script.py"), str(work / "cases.json")], 2)
    errors = "".join(p.read_text() for p in sorted(work.glob("*.error-rank*.txt")))
    assert proc.returncode == 0 and not errors, errors or proc.stderr[-4000:]
    return out


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_the_streamed_checkpoint_is_the_live_one(imported, name):
    _, live, streamed = imported[name]
    a, b = stored_tensors(live / "iter_0000000"), stored_tensors(streamed / "iter_0000000")
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])] == []
    assert documents(live) == documents(streamed)
    assert (streamed / "tokenizer" / "tokenizer.json").exists()
    assert len(list((streamed / "iter_0000000").glob("__1_*.distcp"))) > 0  # the second worker wrote its share


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_a_streamed_export_of_either_is_the_hf_source(imported, name, tmp_path):
    hf, live, streamed = imported[name]
    for source in (live, streamed):  # written by the layout's ranks, and by workers
        out = stream_export(source, tmp_path / source.name, window=20_000)  # a few tensors per read
        assert compare_hf_weights(hf, out) == []
        assert (out / "tokenizer.json").exists() and (out / "config.json").exists()


def test_the_streamed_checkpoint_loads_at_another_layout(imported, tmp_path):
    hf, _, streamed = imported["llama_tp2"]
    assert load_megatron_checkpoint(streamed).run_config["provider"]["tensor_model_parallel_size"] == 2
    out = export_checkpoint(streamed, tmp_path / "hf", Parallelism())  # the live loader, one rank
    assert compare_hf_weights(hf, out) == []


def test_stream_export_refuses_a_checkpoint_missing_a_tensor(imported, tmp_path):
    _, _, streamed = imported["llama_tp2"]
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(streamed), str(broken)], check=True)
    for file in (broken / "iter_0000000").glob("__1_*.distcp"):
        file.write_bytes(b"")  # the second worker's share is gone
    with pytest.raises(Exception, match=str(broken / "iter_0000000")):
        stream_export(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


PEAK = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {here!r})
    import _test_bridges
    from bridge_core.plugins.discovery import reset_registry
    from bridge_core.plugins.registry import Registry
    registry = Registry(); registry.add_plugin(_test_bridges, name="t", strict=True); reset_registry(registry)
    from bridge_core.conversion.stream_export import stream_export
    from bridge_core.conversion.stream_import import stream_import
    from bridge_core.conversion.workflows import import_checkpoint
    from bridge_core.runtime.parallelism import Parallelism
    mode, hf, out = sys.argv[1:4]
    import megatron.core.models.gpt, transformers  # imports peak higher than a small model: count after them
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size (Linux)
    if mode == "stream":
        stream_import(hf, out + "/m", Parallelism(tp=2))
        stream_export(out + "/m", out + "/hf", window=8 << 20)
    else:
        import_checkpoint(hf, out + "/m", Parallelism())
    status = open("/proc/self/status").read()
    print(int(status.split("VmHWM:")[1].split()[0]) * 1024)
    """
)


def peak_rss(mode: str, hf: Path, out: Path) -> int:
    code = PEAK.format(here=str(HERE))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # host memory: with a GPU the live model would sit there
    argv = [sys.executable, "-c", code, mode, str(hf), str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(proc.stdout.split()[-1])


def test_streaming_memory_does_not_grow_with_the_model(tmp_path):
    """A 0.4 GB model (12 layers of 8 MB tensors) against a 2-layer one: the streamed import and export's
    peak grows by less than two of its largest tensors, where building the model grows by the model."""
    wide = {**LLAMA, "hidden_size": 1024, "intermediate_size": 2048, "num_attention_heads": 8, "num_key_value_heads": 8}
    small = build_toy(ToyModel("LlamaForCausalLM", {**wide, "num_hidden_layers": 2}), tmp_path / "small")
    large = build_toy(ToyModel("LlamaForCausalLM", {**wide, "num_hidden_layers": 12}), tmp_path / "large")
    largest = 2048 * 1024 * 2 * 4  # linear_fc1: gate and up
    grown = 10 * (4 * 1024 * 1024 + 3 * 1024 * 2048) * 4  # the 10 layers more
    stream = peak_rss("stream", large, tmp_path / "s-large") - peak_rss("stream", small, tmp_path / "s-small")
    live = peak_rss("live", large, tmp_path / "l-large") - peak_rss("live", small, tmp_path / "l-small")
    assert live > 0.9 * grown, f"the live import grew by {live / 1e6:.0f} MB only; the test measures nothing"
    assert stream < 2 * largest, f"the streamed conversion grew by {stream / 1e6:.0f} MB for {grown / 1e6:.0f} MB more"
