"""A Hugging Face model folder: config (lazy), tensors (streamed), tokenizer and generation files."""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

from bridge_core.checkpoints.input_files import check_input_file, check_regular
from bridge_core.errors import CheckpointError, ConfigError

# Files copied verbatim next to exported weights (whichever exist).
SIDE_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


def read_config_json(folder: Path) -> dict[str, Any]:
    """``config.json`` of ``folder`` as a dict, with one-line errors naming the file."""
    path = folder / "config.json"
    if not os.path.lexists(path):
        raise CheckpointError(f"{path}: missing (an HF model folder needs config.json)")
    return read_json_object(check_input_file(path, folder, "config file"))


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (a regular file), with one-line errors naming the file."""
    check_regular(path, "JSON file")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def architecture_of(config_dict: dict[str, Any], where: str) -> str:
    archs = config_dict.get("architectures")
    if not archs or not isinstance(archs, list) or not isinstance(archs[0], str):
        raise ConfigError(f'{where}: no \'architectures\' entry; add e.g. "architectures": ["LlamaForCausalLM"]')
    return archs[0]


class HFCheckpoint:
    """An HF model folder on disk (``path``), or a bare config (``from_config``) without weights."""

    def __init__(self, path: str | os.PathLike | None, trust_remote_code: bool = False, config: Any = None):
        self.trust_remote_code = trust_remote_code
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            if not self.path.exists():
                raise CheckpointError(f"{self.path}: no such folder")
            if not self.path.is_dir():
                raise CheckpointError(f"{self.path}: not a folder (expected an HF model folder with config.json)")
            self.config_dict = read_config_json(self.path)
            self.architecture = architecture_of(self.config_dict, str(self.path / "config.json"))
        else:
            self.config_dict = config.to_dict()
            self.architecture = architecture_of(self.config_dict, "config")
            self.__dict__["config"] = config

    @classmethod
    def from_config(cls, config: Any) -> HFCheckpoint:
        return cls(None, config=config)

    @cached_property
    def config(self) -> Any:
        """The transformers ``PretrainedConfig`` (remote code only with ``trust_remote_code``)."""
        from transformers import AutoConfig

        assert self.path is not None, "from_config sets the config itself"
        if "auto_map" in self.config_dict and not self.trust_remote_code:
            raise ConfigError(
                f"{self.path / 'config.json'}: the model needs remote code (auto_map); pass --trust-remote-code "
                "(trust_remote_code=True) only if you trust its source"
            )
        try:
            return AutoConfig.from_pretrained(str(self.path), trust_remote_code=self.trust_remote_code)
        except Exception as exc:
            msg = " ".join(str(exc).split())
            raise ConfigError(f"{self.path / 'config.json'}: transformers cannot read it ({msg})") from None

    @cached_property
    def weights(self):
        """The checkpoint's tensors (``SafetensorsCheckpoint``), read on demand."""
        from bridge_core.checkpoints.safetensors_io import SafetensorsCheckpoint

        if self.path is None:
            raise CheckpointError("this bridge was made from a config only; it has no weights to load")
        return SafetensorsCheckpoint(self.path)

    def side_files(self) -> list[Path]:
        """Tokenizer, chat-template and generation-config files present in the folder (each a regular
        file inside it: ``input_files.check_input_file``)."""
        if self.path is None:
            return []
        present = [self.path / n for n in SIDE_FILES if os.path.lexists(self.path / n)]
        return [check_input_file(p, self.path, "tokenizer or generation file") for p in present]
