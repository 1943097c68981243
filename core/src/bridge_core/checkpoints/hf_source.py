"""An HF model folder for ``--hf-model``: a local folder, a Hub snapshot, or a GGUF file dequantized.

The library's and the command line's one way to turn what a user names into a folder to read.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import overload


@overload
def hf_source(path: str, action: str = ...) -> contextlib.AbstractContextManager[Path]: ...
@overload
def hf_source(path: None, action: str = ...) -> contextlib.AbstractContextManager[None]: ...


@contextlib.contextmanager  # type: ignore[misc]  # mypy cannot match a decorated body to the overloads
def hf_source(path: str | None, action: str = "bridgectl") -> Iterator[Path | None]:
    """An HF folder for ``path``: the folder itself, the Hub snapshot of an ``org/name`` ID that is no
    local path, or a temporary folder dequantized from a GGUF file (timed as "decoding GGUF")."""
    if path is None:
        yield None
        return
    from bridge_core.checkpoints.gguf_source import gguf_to_hf_folder, is_gguf
    from bridge_core.checkpoints.hub import resolve_model_path
    from bridge_core.timing import timeline

    source = resolve_model_path(path, action=action)
    if source != Path(path).expanduser():
        timeline().mark("downloading")
    if not is_gguf(source):
        yield source
        return
    tmp = Path(tempfile.mkdtemp(prefix="bridgectl-gguf-"))
    try:
        folder = gguf_to_hf_folder(source, tmp / "hf", action=action)
        timeline().mark("decoding GGUF")
        yield folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
