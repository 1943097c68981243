"""``VocabCopiesMapping``: one vocabulary tensor that the HF checkpoint also stores as copies.

The released DeepSeek-V3 index holds, in each MTP layer, ``embed_tokens.weight`` and
``shared_head.head.weight``: copies of the model's embedding and output layer, which megatron-core's MTP
block shares instead. Import reads the copies and refuses any that differ from the main tensor; export
writes them back, so that nothing the source had is dropped.
"""

from __future__ import annotations

import torch
from bridge_core.mappings import VocabParallelMapping
from bridge_core.mappings.base import MappingContext, RowPiece, Tensor

MAIN = "main"


class VocabCopiesMapping(VocabParallelMapping):
    """``hf_param`` is ``{"main": name, "copy0": name, ...}``; every copy must equal the main tensor."""

    def hf_to_megatron(self, hf_weights: dict[str, Tensor], ctx: MappingContext) -> Tensor:
        main = hf_weights[MAIN]
        for role, tensor in hf_weights.items():
            if role != MAIN and main.device.type != "meta" and not torch.equal(tensor, main):
                raise ValueError(
                    f"{self.hf_param[role]} differs from {self.hf_param[MAIN]} (megatron-core's MTP layers share the "
                    "model's embedding and output layer, so it cannot hold a separate copy)"
                )
        return super().hf_to_megatron(main, ctx)

    def hf_row_layout(self, hf_rows: dict[str, int], ctx: MappingContext) -> list[RowPiece] | None:
        return None

    def megatron_to_hf(self, weight: Tensor, ctx: MappingContext) -> dict[str, Tensor]:
        trimmed = weight[: ctx.hf_config.vocab_size]
        return {name: trimmed for name in self.hf_param.values()}
