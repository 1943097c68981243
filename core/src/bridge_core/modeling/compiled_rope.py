"""``attention.compiled_rope``: megatron-core's rotary embedding through ``torch.compile``.

Megatron-core's fused RoPE kernel (``apply_rope_fusion``) needs Transformer Engine; without it every
layer applies RoPE in several unfused elementwise kernels. Compiling megatron-core's own function fuses
them (measured on an H200 with the other fused kernels: 425 -> 443 TFLOP/s on Llama-3-8B layers,
``docs/benchmarks.md``). Process-wide, idempotent, CUDA only; the math is megatron-core's.
"""

from __future__ import annotations

from bridge_core.errors import ConfigError


def compile_rope() -> None:
    """Replace megatron-core's ``_apply_rotary_pos_emb_bshd`` by its compiled form (once)."""
    import torch
    from megatron.core.models.common.embeddings import rope_utils

    if not torch.cuda.is_available():
        raise ConfigError("attention.compiled_rope=true needs CUDA (torch.compile's fused kernels); set it false")
    current = rope_utils._apply_rotary_pos_emb_bshd
    if getattr(current, "_bridge_compiled", False):
        return
    compiled = torch.compile(current, dynamic=False)
    compiled._bridge_compiled = True
    rope_utils._apply_rotary_pos_emb_bshd = compiled
