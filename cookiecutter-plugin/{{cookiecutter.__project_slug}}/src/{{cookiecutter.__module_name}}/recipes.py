"""Training recipes of {{ cookiecutter.__project_slug }}: Megatron-LM settings for pretraining, SFT and PEFT.

Each recipe is a function returning a plain dict of training arguments (Megatron-LM's flag names
without the leading dashes; ``True`` for a bare switch). ``plugin.py`` registers them as
``{{ cookiecutter.family }}_pretrain``, ``{{ cookiecutter.family }}_sft`` and ``{{ cookiecutter.family }}_peft``
(``bridgectl plugins`` lists them). The SLURM examples turn one into command-line flags:

    python -m {{ cookiecutter.__module_name }}.recipes sft --tp 2            # --tensor-model-parallel-size 2 ...
    python -m {{ cookiecutter.__module_name }}.recipes peft --tp 2 --json    # the same as JSON

The values are starting points for a model of this family; tune them for your data and cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def common(tp: int = 1, pp: int = 1) -> dict[str, Any]:
    """Settings every recipe shares: parallelism, precision, optimizer and schedule shape."""
    return {
        "tensor-model-parallel-size": tp,
        "pipeline-model-parallel-size": pp,
        "sequence-parallel": tp > 1,
        "bf16": True,
        "use-distributed-optimizer": True,
        "seq-length": 4096,
        "micro-batch-size": 1,
        "global-batch-size": 128,
        "optimizer": "adam",
        "adam-beta1": 0.9,
        "adam-beta2": 0.95,
        "weight-decay": 0.1,
        "clip-grad": 1.0,
        "lr-decay-style": "cosine",
        "log-interval": 10,
        "save-interval": 500,
        "eval-interval": 500,
        "eval-iters": 10,
    }


def pretrain(tp: int = 1, pp: int = 1) -> dict[str, Any]:
    """Continued pretraining from a converted checkpoint."""
    return {**common(tp, pp), "lr": 3e-4, "min-lr": 3e-5, "lr-warmup-iters": 2000, "train-iters": 100_000}


def sft(tp: int = 1, pp: int = 1) -> dict[str, Any]:
    """Supervised fine-tuning of every weight (start from the converted checkpoint with --finetune)."""
    return {
        **common(tp, pp),
        "lr": 1e-5,
        "min-lr": 1e-6,
        "lr-warmup-iters": 50,
        "train-iters": 1000,
        "global-batch-size": 64,
        "finetune": True,
    }


def peft(tp: int = 1, pp: int = 1) -> dict[str, Any]:
    """LoRA fine-tuning: the settings of ``sft`` plus the adapter's (for a trainer that supports LoRA)."""
    return {
        **sft(tp, pp),
        "lr": 1e-4,
        "min-lr": 1e-5,
        "peft": "lora",
        "lora-rank": 16,
        "lora-alpha": 32,
        "lora-dropout": 0.0,
        "lora-target-modules": ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"],
    }


RECIPES = {"pretrain": pretrain, "sft": sft, "peft": peft}


def to_args(recipe: dict[str, Any]) -> list[str]:
    """A recipe as command-line flags: ``{"lr": 1e-5, "bf16": True}`` -> ``["--lr", "1e-05", "--bf16"]``."""
    args: list[str] = []
    for key, value in recipe.items():
        if value is False or value is None:
            continue
        args.append(f"--{key}")
        if value is True:
            continue
        args += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m {{ cookiecutter.__module_name }}.recipes", description=__doc__.split("\n")[0]
    )
    parser.add_argument("name", choices=sorted(RECIPES), help="which recipe")
    parser.add_argument("--tp", type=int, default=1, help="tensor model parallel size")
    parser.add_argument("--pp", type=int, default=1, help="pipeline model parallel size")
    parser.add_argument("--json", action="store_true", help="print the recipe as JSON instead of flags")
    args = parser.parse_args(argv)
    recipe = RECIPES[args.name](tp=args.tp, pp=args.pp)
    print(json.dumps(recipe, indent=2) if args.json else " ".join(to_args(recipe)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
