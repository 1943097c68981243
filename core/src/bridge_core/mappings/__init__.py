"""Parameter mappings: how one Megatron parameter corresponds to one or more HF tensors.

Each mapping has a pure *format* transform (full HF tensors <-> the full, unsharded Megatron tensor)
and a pure *sharding* rule (full <-> per-rank shards). The engine does the I/O and communication.
"""

from bridge_core.mappings.base import MappingContext, MegatronParamMapping
from bridge_core.mappings.experts import FusedExpertMapping, FusedGatedExpertMapping
from bridge_core.mappings.fused import GatedMLPMapping, QKVMapping
from bridge_core.mappings.parallel import (
    AutoMapping,
    ColumnParallelMapping,
    ReplicatedMapping,
    RowParallelMapping,
    VocabParallelMapping,
)

__all__ = [
    "AutoMapping",
    "ColumnParallelMapping",
    "FusedExpertMapping",
    "FusedGatedExpertMapping",
    "GatedMLPMapping",
    "MappingContext",
    "MegatronParamMapping",
    "QKVMapping",
    "ReplicatedMapping",
    "RowParallelMapping",
    "VocabParallelMapping",
]
