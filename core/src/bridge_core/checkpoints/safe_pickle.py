"""Reading the pickles inside torch_dist checkpoints without running code from them.

torch's ``FileSystemReader.read_metadata`` reads a checkpoint's ``.metadata`` with plain
``pickle.load``, and its load planner unpickles the objects stored in ``__*.distcp`` files with
``torch.load(weights_only=False)``: a crafted checkpoint could run any code. Here ``.metadata`` is read
by an unpickler that builds only torch's checkpoint-metadata classes, and stored objects are read
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from bridge_core.checkpoints.input_files import check_input_file
from bridge_core.errors import CheckpointError

# Every global a torch_dist ``.metadata`` pickle may name, by module: plain data classes, enums and
# torch's size/layout helpers. Building or calling any of these runs no code of the file's choosing.
_ALLOWED = {
    "torch.distributed.checkpoint.metadata": "Metadata MetadataIndex StorageMeta TensorStorageMetadata "
    "BytesStorageMetadata ChunkStorageMetadata TensorProperties _MEM_FORMAT_ENCODING",
    "torch.distributed.checkpoint.planner": "SavePlan LoadPlan WriteItem ReadItem WriteItemType LoadItemType "
    "TensorWriteData BytesIOWriteData",
    "torch.distributed.checkpoint.filesystem": "_StorageInfo _StoragePrefix SerializationFormat",
    "torch": "Size",
    "torch.serialization": "_get_layout",
    "pathlib": "PosixPath PurePosixPath WindowsPath PureWindowsPath",
    "pathlib._local": "PosixPath PurePosixPath WindowsPath PureWindowsPath",
    "collections": "OrderedDict",
    "builtins": "set frozenset",
}
ALLOWED_GLOBALS = frozenset((module, name) for module, names in _ALLOWED.items() for name in names.split())


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ``ALLOWED_GLOBALS`` and torch dtypes; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and "." not in name and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def read_dcp_metadata(path: str | Path) -> Any:
    """Unpickle a torch_dist ``.metadata`` file with ``RestrictedUnpickler``.

    Raises ``CheckpointError`` naming the file when it is missing, corrupt, or names any global
    outside ``ALLOWED_GLOBALS`` (such a file is refused before anything in it is called), and when a
    storage file it names is not a plain file name of its folder (``../x.distcp`` would read outside
    the checkpoint) or not a regular file inside it.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        check_input_file(path, path.parent, "checkpoint tensor index")
    try:
        with open(path, "rb") as f:
            metadata = RestrictedUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (the checkpoint's tensor index)") from None
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: refused to unpickle: {reason}") from exc
    from torch.distributed.checkpoint.metadata import Metadata

    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{path}: holds a {type(metadata).__name__}, not torch checkpoint metadata")
    _check_storage_files(path, metadata)
    return metadata


def _check_storage_files(path: Path, metadata: Any) -> None:
    """Every storage file ``.metadata`` names is a plain, regular file next to it."""
    storage = getattr(metadata, "storage_data", None) or {}
    if not isinstance(storage, dict):
        raise CheckpointError(f"{path}: storage_data is a {type(storage).__name__}, not a mapping; refused")
    names = set()
    for info in storage.values():
        name = getattr(info, "relative_path", None)
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
            raise CheckpointError(
                f"{path}: storage file {name!r} is not a plain file name inside {path.parent}; refused"
            )
        names.add(name)
    for name in sorted(names):
        if (path.parent / name).exists() or (path.parent / name).is_symlink():
            check_input_file(path.parent / name, path.parent, "checkpoint storage file")


def load_weights_only(data: bytes | io.BytesIO) -> Any:
    """``torch.load`` of an object stored in a checkpoint, restricted to tensors and plain data."""
    if isinstance(data, (bytes, bytearray)):
        data = io.BytesIO(data)
    return torch.load(data, weights_only=True)
