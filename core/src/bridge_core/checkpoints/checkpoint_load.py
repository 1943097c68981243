"""Loading a Megatron-LM ``torch_dist`` checkpoint into model chunks at any TP/PP, safely and in place.

``.metadata`` is read with a restricted unpickler and stored objects with ``weights_only=True``; the
parameters are dist-checkpointing's destination, so the load needs no second copy of the model.
Both layouts of the common (non-tensor) state load: ``common.pt`` (megatron-core before 0.17) and the
``common_state`` object inside the torch_dist files (0.17 and later, which read both).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing import serialization as mcore_serialization
from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace, nested_values
from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory
from megatron.core.dist_checkpointing.strategies import torch as mcore_torch_strategies
from megatron.core.dist_checkpointing.strategies.common import COMMON_STATE_FNAME
from megatron.core.dist_checkpointing.strategies.torch import MCoreLoadPlanner, TorchDistLoadShardedStrategy
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException

from bridge_core.checkpoints.checkpoint_format import (
    CONTENT_METADATA,
    RUN_CONFIG,
    CheckpointInfo,
    load_megatron_checkpoint,
    model_keys,
)
from bridge_core.checkpoints.input_files import check_input_file
from bridge_core.checkpoints.safe_pickle import load_weights_only, read_dcp_metadata
from bridge_core.errors import CheckpointError
from bridge_core.runtime.chunks import unwrap_chunks

try:  # megatron-core < 0.17: the common state is common.pt, read through a strategy
    from megatron.core.dist_checkpointing.strategies.common import TorchCommonLoadStrategy
except ImportError:  # 0.17+: a ShardedObject in the torch_dist files (common.pt still read if present)
    TorchCommonLoadStrategy = None

COMMON_STATE_KEY = "common_state/shard_0_1"  # ShardedObject("common_state", ..., (1,), (0,)).unique_key


class _SafeReader(FileSystemReader):
    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        from torch.distributed.checkpoint.metadata import StorageMeta

        metadata = read_dcp_metadata(Path(self.path) / ".metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafeLoadPlanner(MCoreLoadPlanner):
    def load_bytes(self, read_item: Any, value: Any) -> None:
        obj = load_weights_only(value)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


class _SafeLoadStrategy(TorchDistLoadShardedStrategy):
    """megatron's torch_dist loader with the restricted ``.metadata`` reader and weights-only objects."""

    def load(self, sharded_state_dict: Any, checkpoint_dir: Any, *args: Any, **kwargs: Any) -> Any:
        with _safe_readers(), warnings.catch_warnings():
            # torch's notice that its ShardedTensor (used inside) is deprecated
            warnings.filterwarnings("ignore", "Please use DTensor", FutureWarning)
            return super().load(sharded_state_dict, checkpoint_dir, *args, **kwargs)


def safe_dist_load(sharded_state_dict: dict, weights_dir: str | os.PathLike, *, partial: bool = False) -> dict:
    """``dist_checkpointing.load`` with the restricted readers (safe unpickling) and the common kwargs.

    ``partial``: the state dict asks for some of the stored tensors only (some layers of a stacked
    key), so megatron-core's check that the ranks together ask for all of each is skipped.
    """
    with _safe_readers():  # megatron-core 0.17+ reads the common state outside the strategy
        return dist_checkpointing.load(
            sharded_state_dict,
            str(weights_dir),
            sharded_strategy=_SafeLoadStrategy(),
            validate_access_integrity=not partial,
            **_COMMON_KWARGS,
        )


@contextlib.contextmanager
def _safe_readers() -> Iterator[None]:
    """Point megatron's filesystem reader and load planner at the restricted ones while inside."""
    patches: list[tuple[Any, str, Any]] = [  # (module, attribute, replacement)
        (module, "_get_filesystem_reader", lambda checkpoint_dir, *_, **__: _SafeReader(checkpoint_dir))
        for module in (mcore_torch_strategies, mcore_serialization)
        if hasattr(module, "_get_filesystem_reader")
    ]
    patches.append((mcore_torch_strategies, "MCoreLoadPlanner", _SafeLoadPlanner))
    if TorchCommonLoadStrategy is None:  # 0.17+ unpickles the common state with weights_only=False
        patches.append((mcore_serialization, "load_common_state_dict", read_common_state))
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    try:
        for module, name, value in patches:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def read_common_state(weights: str | os.PathLike) -> dict:
    """The checkpoint's common state (args, iteration, content metadata), read safely in this process.

    From ``common.pt`` where it exists, else from the ``common_state`` object inside the torch_dist
    files (megatron-core 0.17 and later write it there).
    """
    weights = Path(weights)
    file = weights / COMMON_STATE_FNAME
    if file.exists() or (TorchCommonLoadStrategy is not None and not _has_inner_common(weights)):
        return _load_common(weights)  # also read by megatron-core < 0.17 from the 0.17+ layout (below)
    metadata = read_dcp_metadata(weights / ".metadata")
    if COMMON_STATE_KEY not in metadata.state_dict_metadata:
        raise CheckpointError(f"{file}: missing, and {weights / '.metadata'} holds no {COMMON_STATE_KEY}")
    state = {COMMON_STATE_KEY: io.BytesIO()}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Please use DTensor", FutureWarning)
            torch.distributed.checkpoint.load(
                state, storage_reader=_SafeReader(weights), planner=_SafeLoadPlanner(), no_dist=True
            )
    except (Exception, CheckpointException) as exc:
        raise CheckpointError(f"{weights}: cannot read the common state: {_one_line(exc)}") from exc
    common = state[COMMON_STATE_KEY]  # unpickled, weights only, by _SafeLoadPlanner.load_bytes
    common = common[0] if isinstance(common, list) and len(common) == 1 else common
    return _common_dict(common, f"{weights / '.metadata'} ({COMMON_STATE_KEY})")


def _common_dict(common: Any, where: object) -> dict:
    """The common state must be a dict (args, iteration, ...); anything else is refused by name."""
    if not isinstance(common, dict):
        raise CheckpointError(f"{where}: the common state is a {type(common).__name__}, not a dict; refused")
    return common


def _load_common(weights: Path) -> dict:
    file = weights / COMMON_STATE_FNAME
    try:
        if file.exists():
            check_input_file(file, weights, "common state file")
        with open(file, "rb") as f:
            common = torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        newer = " (a checkpoint written by megatron-core 0.17 or newer, which this megatron-core cannot read)"
        raise CheckpointError(f"{file}: missing{newer if _has_inner_common(weights) else ''}") from None
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{file}: refused to load: {_one_line(exc)}") from exc
    return _common_dict(common, file)


def _has_inner_common(weights: Path) -> bool:
    try:
        return COMMON_STATE_KEY in read_dcp_metadata(weights / ".metadata").state_dict_metadata
    except CheckpointError:
        return False


if TorchCommonLoadStrategy is not None:

    class _SafeCommonLoadStrategy(TorchCommonLoadStrategy):
        def load_common(self, checkpoint_dir: str | Path) -> Any:
            return read_common_state(Path(checkpoint_dir))

    _COMMON_KWARGS: dict[str, Any] = {"common_strategy": _SafeCommonLoadStrategy()}
else:
    _COMMON_KWARGS = {}


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, CheckpointException) and exc.failures:
        exc = next(iter(exc.failures.values()))[0]
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if isinstance(exc, CheckpointError):
        return text
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _check_vocab(chunks: list[torch.nn.Module], info: CheckpointInfo) -> None:
    # dist-checkpointing pads or truncates embedding rows to the model's size; truncating real tokens is refused.
    saved = info.run_config.get("provider", {})
    tokens, rows = saved.get("vocab_size"), getattr(chunks[0], "vocab_size", None)
    if isinstance(tokens, int) and isinstance(rows, int) and rows < tokens:
        raise CheckpointError(
            f"{info.path / RUN_CONFIG}: the checkpoint has {tokens} tokens but the model only {rows} vocabulary rows; "
            f"build it with padded_vocab_size={saved.get('padded_vocab_size')} (provider_kwargs_from_run_config)"
        )


def _aliases_whole(leaves: list[Any], target: torch.Tensor) -> bool:
    """True when ``leaves`` are contiguous views of ``target``'s memory that tile it exactly."""
    if not target.is_contiguous() or not leaves or not all(isinstance(t, torch.Tensor) for t in leaves):
        return False
    storage = target.untyped_storage().data_ptr()
    spans = []
    for t in leaves:
        if t.device != target.device or t.dtype != target.dtype or not t.is_contiguous():
            return False
        if t.untyped_storage().data_ptr() != storage:
            return False
        spans.append((t.data_ptr(), t.data_ptr() + t.nbytes))
    position = target.data_ptr()
    for start, end in sorted(spans):
        if start != position:
            return False
        position = end
    return position == target.data_ptr() + target.nbytes


def _merge_in_place(merge: Any, target: torch.Tensor) -> Any:
    """A factory merge that returns ``target`` itself when the loaded pieces are views of it.

    megatron-core loads into the ``ShardedTensor.data`` it is given; a factory (the gate/up halves of
    ``linear_fc1``) builds those as views of the parameter, so after the load the parameter already
    holds the values and the factory's ``torch.cat`` would only make a second copy of it.
    """

    def merged(loaded: Any) -> Any:
        leaves = list(nested_values(loaded)) if isinstance(loaded, (dict, list)) else [loaded]
        return target if _aliases_whole(leaves, target) else merge(loaded)

    return merged


def _load_in_place(sharded: dict) -> dict:
    """Make every ShardedTensorFactory of ``sharded`` merge into its own parameter (no copy)."""

    def patch(value: Any) -> Any:
        if isinstance(value, ShardedTensorFactory) and isinstance(value.data, torch.Tensor):
            return dataclasses.replace(value, merge_fn=_merge_in_place(value.merge_fn, value.data.detach()))
        return value

    return dict_list_map_inplace(patch, sharded)


def _refuse_adapters_only(path: Path) -> None:
    from bridge_core.peft.document import PEFT_FILE

    if (path / PEFT_FILE).is_file():
        raise CheckpointError(
            f"{path}: holds PEFT adapters only ({PEFT_FILE}), not a model; use 'bridgectl peft export' (the adapter) "
            "or 'bridgectl peft merge' (a merged HF model)"
        )


def load_weights_into(model_chunks: Any, checkpoint: str | os.PathLike | CheckpointInfo) -> CheckpointInfo:
    """Load the checkpoint's weights into this rank's model chunks (every rank calls it).

    The model may be built at any tensor/pipeline/virtual-pipeline parallel size: dist-checkpointing
    reads each rank's slices of the stored global tensors. Build it from
    ``provider_kwargs_from_run_config`` so the shapes (padded vocabulary included) match. The
    checkpoint's pickles are read safely; an unsafe or corrupt file raises ``CheckpointError``.
    """
    info = checkpoint if isinstance(checkpoint, CheckpointInfo) else load_megatron_checkpoint(checkpoint)
    _refuse_adapters_only(info.path)
    weights = info.weights_dir
    chunks = unwrap_chunks(model_chunks)
    read_dcp_metadata(weights / ".metadata")  # refuse an unsafe index before anything else reads it
    metadata = read_common_state(weights).get("content_metadata") or dict(CONTENT_METADATA)
    _check_vocab(chunks, info)
    keys = model_keys(len(chunks))
    # The ShardedTensor.data of the model's own sharded state dict are its parameters (or views of
    # them): dist-checkpointing reads into them in place, and load_state_dict's copy onto itself is
    # a no-op, so the load needs no second copy of the model.
    sharded = _load_in_place(
        {key: chunk.sharded_state_dict(metadata=dict(metadata)) for key, chunk in zip(keys, chunks)}
    )
    try:
        loaded = safe_dist_load(sharded, weights)
        for key, chunk in zip(keys, chunks):
            chunk.load_state_dict(loaded.pop(key), strict=True)
        del loaded
    except (Exception, CheckpointException) as exc:
        raise CheckpointError(f"{weights}: cannot load the weights into this model: {_one_line(exc)}") from exc
    return info
