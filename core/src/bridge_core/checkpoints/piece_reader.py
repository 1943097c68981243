"""Read any box of a stored ``torch_dist`` tensor into a given tensor, whatever layout wrote it.

megatron-core's loader asks for whole keys (every layer of a stacked key on some rank); a streaming
export wants a few parameters at a time. This reads through torch's own filesystem reader and
resharding (``create_read_items_for_chunk_list``): each request is (stored key, global offset,
destination), the destination's shape being the box's. The index is read once, safely, and reused.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from bridge_core.checkpoints.checkpoint_load import _one_line, _SafeReader
from bridge_core.errors import CheckpointError

Request = tuple[str, tuple[int, ...], torch.Tensor]  # (stored key, global offset, destination)


class _CachedReader(_SafeReader):
    """The safe reader, reading ``.metadata`` once."""

    _metadata: Any = None

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        if self._metadata is None:
            self._metadata = super().read_metadata(*args, **kwargs)
        return self._metadata


class _BoxPlanner(DefaultLoadPlanner):
    """Reads exactly the requested boxes (nothing else of the stored keys)."""

    def __init__(self, requests: list[Request]):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.requests = requests
        self.dest = {(key, tuple(offset)): tensor for key, offset, tensor in requests}

    def create_local_plan(self) -> LoadPlan:
        items = []
        for key, offset, tensor in self.requests:
            stored = self.metadata.state_dict_metadata.get(key)
            if not isinstance(stored, TensorStorageMetadata):
                raise CheckpointError(f"{key}: not a tensor stored in the checkpoint")
            box = [o + s for o, s in zip(offset, tensor.shape)]
            if len(offset) != len(stored.size) or any(e > s for e, s in zip(box, stored.size)):
                raise CheckpointError(
                    f"{key}: the checkpoint stores {tuple(stored.size)}, "
                    f"no box {tuple(tensor.shape)} at {tuple(offset)}"
                )
            if stored.properties.dtype != tensor.dtype:
                raise CheckpointError(f"{key}: stored as {stored.properties.dtype}, asked for as {tensor.dtype}")
            chunk = ChunkStorageMetadata(offsets=torch.Size(offset), sizes=tensor.shape)
            items += create_read_items_for_chunk_list(key, stored, [chunk])
        return LoadPlan(items)

    def resolve_tensor(self, read_item: Any) -> torch.Tensor:
        tensor = self.dest[(read_item.dest_index.fqn, tuple(read_item.dest_index.offset))]
        return self.transform_tensor(read_item, tensor)  # the read item's box of it


class PieceReader:
    """``read(requests)`` fills each destination from one checkpoint's ``iter_*/`` folder."""

    def __init__(self, weights_dir: str | Path):
        self.weights_dir = Path(weights_dir)
        self.reader = _CachedReader(self.weights_dir)

    def read(self, requests: Iterable[Request]) -> None:
        requests = list(requests)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
                dcp.load({}, storage_reader=self.reader, planner=_BoxPlanner(requests), no_dist=True)
        except CheckpointError:
            raise
        except (Exception, CheckpointException) as exc:  # torch's CheckpointException is a BaseException
            first = requests[0][0] if requests else "nothing"
            more = f" (+{len(requests) - 1} more)" if len(requests) > 1 else ""
            raise CheckpointError(f"{self.weights_dir}: cannot read {first}{more}: {_one_line(exc)}") from exc
