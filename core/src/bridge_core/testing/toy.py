"""Toy HF checkpoints built from configs with random weights (no Hub access needed)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ToyModel:
    """An HF architecture and the config values of a tiny instance of it."""

    architecture: str
    config: dict[str, Any]
    dtype: str = "float32"
    seed: int = 0
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def model_type(self) -> str:
        return self.config["model_type"]


def build_toy(toy: ToyModel, folder: str | Path) -> Path:
    """Save ``toy`` as an HF folder (config.json, safetensors, generation config) and return it.

    Weights are random with a larger init scale than HF's default, and norm weights are perturbed
    around 1, so that logits are O(1) and every tensor matters to the comparison.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    values = {k: v for k, v in toy.config.items() if k != "model_type"}
    values.setdefault("initializer_range", 0.08)
    config = AutoConfig.for_model(toy.model_type, architectures=[toy.architecture], **values)
    torch.manual_seed(toy.seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and param.dim() == 1:
                param.normal_(1.0, 0.1)
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.05)
    model = model.to(getattr(torch, toy.dtype)).eval()
    model.save_pretrained(folder)
    config_file = folder / "config.json"  # save_pretrained writes the class name; keep the toy's
    saved = json.loads(config_file.read_text())
    if saved.get("architectures") != [toy.architecture]:
        config_file.write_text(json.dumps({**saved, "architectures": [toy.architecture]}, indent=2))
    return folder


def hf_logits(folder: str | Path, input_ids: Any, dtype: Any = "auto") -> Any:
    """transformers' own logits of the saved model (the independent reference), as fp32.

    ``dtype``: the dtype transformers computes in (default: the checkpoint's; ``torch.float32`` for
    the fp32 check of a bf16 checkpoint).
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    with torch.no_grad():
        return model(input_ids).logits.float()


def sample_ids(vocab_size: int, batch: int = 2, seq: int = 64, seed: int = 1) -> Any:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq), generator=gen)
