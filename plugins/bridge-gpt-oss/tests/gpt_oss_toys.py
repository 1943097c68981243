"""The GPT-OSS toys and the post-processing that makes every feature bind.

transformers initialises the expert biases to zero and the sinks near zero; ``randomised_copy`` re-saves
a toy with sinks, expert biases and router biases drawn large enough to move the logits, and
``scale`` multiplies the expert weights so that ``|gate|`` and ``|up|`` exceed ``swiglu_limit`` (the
clamp binds). Folders are made once per session.
"""

from __future__ import annotations

from pathlib import Path

GPT_OSS = {
    "model_type": "gpt_oss",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_hidden_layers": 2,
    "intermediate_size": 32,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "router_aux_loss_coef": 0.01,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
    "sliding_window": 8,  # shorter than the test sequences (64)
    "layer_types": ["sliding_attention", "full_attention"],
    "swiglu_limit": 7.0,
    "rope_parameters": {
        "rope_type": "yarn",
        "rope_theta": 150000.0,
        "factor": 4.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "truncate": False,
        "original_max_position_embeddings": 128,
    },
    "eos_token_id": 999,
    "pad_token_id": 998,
}
# Four layers (PP=2 with a windowed and a full layer on each stage).
GPT_OSS_4L = {
    **GPT_OSS,
    "num_hidden_layers": 4,
    "layer_types": ["sliding_attention", "full_attention"] * 2,
}

_MADE: dict[tuple, Path] = {}


CLAMP_SCALE = 10.0  # expert weights x10: 13 % of |gate| and 28 % of |up| exceed swiglu_limit=7 (measured)


def randomised_copy(folder: Path, mktemp, scale: float = CLAMP_SCALE, seed: int = 0) -> Path:
    """``folder`` re-saved with random sinks and biases, and expert weights times ``scale``."""
    key = (folder, scale, seed)
    if key not in _MADE:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                noise = torch.randn(param.shape, generator=gen)
                if name.endswith("sinks"):
                    param.copy_(noise)  # O(1): comparable to the scores
                elif name.endswith(("_proj_bias", "router.bias")):
                    param.copy_(0.1 * noise)
                elif name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                    param.mul_(scale)
        out = mktemp("gpt-oss") / "hf"
        model.save_pretrained(out)
        _MADE[key] = out
    return _MADE[key]


MXFP4_QUANTIZATION = {
    "quant_method": "mxfp4",
    "modules_to_not_convert": [
        "model.layers.*.self_attn",
        "model.layers.*.mlp.router",
        "model.embed_tokens",
        "lm_head",
    ],
}


def mxfp4_copy(folder: Path, mktemp, seed: int = 0) -> Path:
    """``folder`` with its experts replaced by random MXFP4 ones: ``{gate_up,down}_proj_blocks`` (uint8,
    two E2M1 codes a byte) and ``_scales`` (E8M0, 2^-7 .. 2^1), as the released checkpoints store them;
    config.json gains their ``quantization_config``. Everything else is copied as it is."""
    key = (folder, "mxfp4", seed)
    if key not in _MADE:
        import json

        import torch
        from safetensors.torch import load_file, save_file

        gen = torch.Generator().manual_seed(seed)
        tensors, out = load_file(str(folder / "model.safetensors")), {}
        for name, tensor in tensors.items():
            if not name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                out[name] = tensor
                continue
            experts, rows = tensor.shape[0], tensor.shape[2]  # HF [E, in, out]: MXFP4 holds [E, out, in]
            groups = tensor.shape[1] // 32
            out[f"{name}_blocks"] = torch.randint(0, 256, (experts, rows, groups, 16), dtype=torch.uint8, generator=gen)
            out[f"{name}_scales"] = torch.randint(120, 129, (experts, rows, groups), dtype=torch.uint8, generator=gen)
        target = mktemp("gpt-oss-mxfp4") / "hf"
        target.mkdir(parents=True, exist_ok=True)
        save_file(out, str(target / "model.safetensors"), metadata={"format": "pt"})
        for extra in folder.iterdir():
            if extra.name not in ("model.safetensors", "config.json"):
                (target / extra.name).write_bytes(extra.read_bytes())
        config = json.loads((folder / "config.json").read_text())
        config.update({"quantization_config": MXFP4_QUANTIZATION, "dtype": "bfloat16"})
        (target / "config.json").write_text(json.dumps(config, indent=2))
        _MADE[key] = target
    return _MADE[key]
