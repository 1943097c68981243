"""A bridge's set of mappings, resolving concrete names in both directions."""

from __future__ import annotations

from collections.abc import Iterator

from bridge_core.mappings.base import MegatronParamMapping, compile_pattern


class MegatronMappingRegistry:
    """Resolve Megatron parameter names (global layer/expert numbering) to bound mappings, and back.

    A bridge lists every spelling it supports (the local layer spec's and Transformer Engine's norm
    names, for instance); a mapping that matches no parameter of a given model is simply unused. A
    name matched by two mappings is an error: the registry refuses to guess.
    """

    def __init__(self, *mappings: MegatronParamMapping):
        for m in mappings:
            if not isinstance(m, MegatronParamMapping):
                raise TypeError(f"MegatronMappingRegistry takes mappings, got {m!r}")
        self.mappings = list(mappings)
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
