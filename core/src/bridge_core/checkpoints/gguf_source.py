"""GGUF files (llama.cpp) as a conversion source: dequantize them into an ordinary HF model folder.

``gguf_to_hf_folder`` goes through transformers' own GGUF support (``from_pretrained(folder,
gguf_file=name)``, which dequantizes every tensor and undoes llama.cpp's q/k permutation) and writes
safetensors weights, a ``config.json`` without ``quantization_config``, the tokenizer files and
``generation_config.json``. The rest of bridge-core then converts that folder like any other.
Needs the ``gguf`` and ``accelerate`` packages: ``pip install 'bridge-core[gguf]'``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

from bridge_core.checkpoints.output_dir import atomic_output_dir, check_output_dir
from bridge_core.errors import CheckpointError
from bridge_core.progress import Progress, is_rank0, stage

GGUF_MAGIC = b"GGUF"
GGUF_EXTRA = "pip install 'bridge-core[gguf]'"
# Not written to config.json: a dequantized folder is not quantized, and transformers' GGUF reader adds
# file metadata that is no model setting (general.name, the tokenizer's unknown-token id).
DROPPED_CONFIG_KEYS = ("quantization_config", "_model_name_or_path", "unk_token_id")


def _gguf_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".gguf")


def is_gguf(path: str | os.PathLike) -> bool:
    """True for a ``.gguf`` file, or a folder holding exactly one ``.gguf`` file and no ``config.json``.

    Decided by names only (cheap, no file is read); ``resolve_gguf`` checks the contents.
    """
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".gguf"
    if path.is_dir():
        return not (path / "config.json").exists() and len(_gguf_files(path)) == 1
    return False


def resolve_gguf(path: str | os.PathLike) -> Path:
    """The GGUF file that ``path`` names (the file itself, or the only ``.gguf`` in a folder), checked
    to start with the GGUF magic bytes. Raises ``CheckpointError`` otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_dir():
        found = _gguf_files(path)
        if not found:
            raise CheckpointError(f"{path}: no .gguf file in this folder")
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise CheckpointError(f"{path}: {len(found)} .gguf files ({names}); name the one to convert")
        path = found[0]
    try:
        with path.open("rb") as f:
            magic = f.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if magic != GGUF_MAGIC:
        raise CheckpointError(f"{path}: not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")
    return path


def check_gguf_dependencies() -> None:
    """Raise ``CheckpointError`` naming the extra to install when ``gguf`` or ``accelerate`` is missing."""
    missing = [name for name in ("gguf", "accelerate") if find_spec(name) is None]
    if missing:
        raise CheckpointError(f"reading GGUF files needs {' and '.join(missing)}, not installed: {GGUF_EXTRA}")


@contextlib.contextmanager
def _shown_stages(action: str) -> Iterator[None]:
    """transformers' GGUF reading shown as stage lines and a counted dequantization (bar or log lines).

    transformers reads the file through ``load_gguf_checkpoint`` (metadata for the config and the
    tokenizer, then the tensors) and dequantizes in a ``tqdm(reader.tensors, ...)`` loop, both in
    ``modeling_gguf_pytorch_utils``; those names are wrapped for the duration of the load (a
    transformers without them loads as before, with fewer lines).
    """
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original_tqdm = getattr(gguf_utils, "tqdm", None)
    original_load = getattr(gguf_utils, "load_gguf_checkpoint", None)

    def counted(iterable, *args, **kwargs):
        items = list(iterable)
        progress = Progress(action, enabled=is_rank0(), unit="GGUF tensors", stage="dequantizing")
        return progress.iterate(items, [int(getattr(t, "n_bytes", 0)) for t in items])

    def load(*args, **kwargs):
        tensors = kwargs.get("return_tensors", False)
        stage(action, "parsing the GGUF file and its tensor names" if tensors else "parsing the GGUF metadata")
        return original_load(*args, **kwargs)

    if original_tqdm is not None:
        gguf_utils.tqdm = counted
    if original_load is not None:
        gguf_utils.load_gguf_checkpoint = load
    try:
        yield
    finally:
        if original_tqdm is not None:
            gguf_utils.tqdm = original_tqdm
        if original_load is not None:
            gguf_utils.load_gguf_checkpoint = original_load


def _load_dequantized(file: Path, action: str = "gguf"):
    """transformers' model (plain dense tensors) and tokenizer for ``file``."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(file.parent), file.name
    kwargs = {}
    gguf_config = getattr(transformers, "GgufConfig", None)
    if gguf_config is not None and "dequantize" in inspect.signature(gguf_config).parameters:
        # transformers >= 5 may keep weights packed in GGUF blocks; ask for plain dense tensors.
        kwargs["quantization_config"] = gguf_config(gguf_file=name, dequantize=True)
    try:
        with _shown_stages(action):
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **kwargs)
            stage(action, "building the tokenizer from the GGUF file")
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise CheckpointError(f"{file}: transformers cannot load this GGUF file ({msg})") from exc
    # A dequantized model is an ordinary model: drop the quantizer so that save_pretrained accepts it.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def gguf_to_hf_folder(
    path: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False, action: str = "gguf"
) -> Path:
    """Dequantize the GGUF model at ``path`` (a file, or a folder with one) into the HF folder ``out_dir``.

    Writes safetensors weights (sharded above 5 GB), ``config.json`` (without ``DROPPED_CONFIG_KEYS``),
    ``generation_config.json`` and the tokenizer files. The tensors are what transformers dequantizes
    (float32 for a quantized file). ``out_dir`` must not exist or be empty unless ``overwrite``; it is
    written atomically (a temporary sibling renamed at the end). Returns ``out_dir``. Its stages are
    shown as ``action: ...`` lines and a dequantization bar (see ``bridge_core.progress``).
    """
    file = resolve_gguf(path)
    out = check_output_dir(out_dir, overwrite)
    check_gguf_dependencies()
    size = file.stat().st_size / 1e9
    stage(action, f"decoding GGUF file {file} ({size:.2f} GB) through transformers: loading transformers")
    model, tokenizer = _load_dequantized(file, action)
    stage(action, "writing the dequantized HF folder")
    with atomic_output_dir(out, overwrite) as tmp:
        model.save_pretrained(tmp, max_shard_size="5GB")
        tokenizer.save_pretrained(tmp)
        config_path = tmp / "config.json"
        config = json.loads(config_path.read_text())
        dropped = [key for key in DROPPED_CONFIG_KEYS if key in config]
        if dropped:
            for key in dropped:
                del config[key]
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if not (tmp / "generation_config.json").exists() and getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
    return out
