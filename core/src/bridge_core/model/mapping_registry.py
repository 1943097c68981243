"""A bridge's set of mappings, resolving concrete names in both directions."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator

from bridge_core.mappings.base import MegatronParamMapping, compile_pattern

# Transformer Engine's layer spec fuses a norm into the linear layer after it: the norm's weight is then
# that linear's ``layer_norm_weight`` (``layer_norm_bias``), e.g. ``decoder.layers.*.input_layernorm.weight``
# is ``decoder.layers.*.self_attention.linear_qkv.layer_norm_weight``, ``decoder.layers.*.pre_mlp_layernorm.weight``
# ``decoder.layers.*.mlp.linear_fc1.layer_norm_weight``. Norm -> the linear it is fused into.
FUSED_NORMS = {
    "input_layernorm": "self_attention.linear_qkv",
    "pre_mlp_layernorm": "mlp.linear_fc1",
    "self_attention.q_layernorm": "self_attention.linear_q_up_proj",  # multi-latent attention
    "self_attention.kv_layernorm": "self_attention.linear_kv_up_proj",
}
_NORM = re.compile(rf"^(.*\.)({'|'.join(map(re.escape, FUSED_NORMS))})\.(weight|bias)$")
# The local spec's per-expert linears; TE's grouped experts put the expert index at the end:
# ``decoder.layers.*.mlp.experts.local_experts.*.linear_fc1.weight`` is
# ``decoder.layers.*.mlp.experts.linear_fc1.weight*``.
_LOCAL_EXPERT = re.compile(r"^(.*\.mlp\.experts\.)local_experts\.\*\.(linear_fc[12]\.(?:weight|bias))$")


def te_spelling(name: str, listed: Collection[str]) -> str | None:
    """The Transformer Engine spelling of the local-spec pattern ``name``; None where TE spells it alike.

    A norm is fused only into a linear layer the bridge maps (``listed``: every pattern it lists): the
    input norm of multi-latent attention, or the pre-MLP norm of a layer with only experts, stays a norm.
    """
    if m := _LOCAL_EXPERT.match(name):
        return f"{m[1]}{m[2]}*"
    if (m := _NORM.match(name)) and f"{m[1]}{FUSED_NORMS[m[2]]}.weight" in listed:
        return f"{m[1]}{FUSED_NORMS[m[2]]}.layer_norm_{m[3]}"
    return None


def with_te_spellings(mappings: Collection[MegatronParamMapping]) -> list[MegatronParamMapping]:
    """``mappings``, each followed by its copy under the Transformer Engine spelling (``te_spelling``)
    unless that spelling is listed already."""
    listed = {m.megatron_param for m in mappings}
    out = []
    for m in mappings:
        out.append(m)
        te = te_spelling(m.megatron_param, listed)
        if te is not None and te not in listed:
            out.append(m.renamed(te))
    return out


class MegatronMappingRegistry:
    """Resolve Megatron parameter names (global layer/expert numbering) to bound mappings, and back.

    A bridge lists each parameter in megatron-core's local layer spec spelling; the registry adds the
    Transformer Engine spelling of the same tensor (``with_te_spellings``: fused norms, grouped experts).
    A mapping that matches no parameter of a given model is simply unused. A name matched by two
    mappings is an error: the registry refuses to guess.
    """

    def __init__(self, *mappings: MegatronParamMapping):
        for m in mappings:
            if not isinstance(m, MegatronParamMapping):
                raise TypeError(f"MegatronMappingRegistry takes mappings, got {m!r}")
        self.mappings = with_te_spellings(mappings)
        self._hf_regexes = [[compile_pattern(n) for n in m.hf_names] for m in self.mappings]

    def __iter__(self) -> Iterator[MegatronParamMapping]:
        return iter(self.mappings)

    def __len__(self) -> int:
        return len(self.mappings)

    def megatron_to_hf_lookup(self, megatron_name: str) -> MegatronParamMapping | None:
        """The mapping bound to ``megatron_name`` (HF names filled in), or None if nothing matches."""
        found = [b for m in self.mappings if (b := m.match(megatron_name)) is not None]
        if len(found) > 1:
            raise ValueError(f"{megatron_name} is matched by several mappings: {found}")
        return found[0] if found else None

    def hf_to_megatron_lookup(self, hf_name: str) -> list[MegatronParamMapping]:
        """The (unbound) mappings that read ``hf_name``."""
        return [m for m, regexes in zip(self.mappings, self._hf_regexes) if any(r.match(hf_name) for r in regexes)]
