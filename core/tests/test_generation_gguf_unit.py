"""GGUF sources: recognising them and the one-line errors for bad ones; generation's argument checks.

No plugin and no real GGUF file is needed: the files here are fakes (a GGUF header is only its magic).
"""

from __future__ import annotations

import re

import pytest
import torch

from bridge_core.checkpoints import gguf_source
from bridge_core.checkpoints.gguf_source import gguf_to_hf_folder, is_gguf, resolve_gguf
from bridge_core.errors import CheckpointError

HEADER = b"GGUF" + (3).to_bytes(4, "little") + bytes(16)  # magic, version 3, no tensors, no metadata


def test_is_gguf(tmp_path):
    (tmp_path / "m.gguf").write_bytes(HEADER)
    (tmp_path / "notes.txt").write_text("x")
    assert is_gguf(tmp_path / "m.gguf")
    assert is_gguf(tmp_path)  # a folder with exactly one .gguf and no config.json
    assert not is_gguf(tmp_path / "notes.txt")
    assert not is_gguf(tmp_path / "missing.gguf")
    (tmp_path / "config.json").write_text("{}")
    assert not is_gguf(tmp_path)  # an HF folder, even with a .gguf beside it
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.gguf").write_bytes(HEADER)
    (two / "b.GGUF").write_bytes(HEADER)
    assert not is_gguf(two)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not is_gguf(empty)


def test_resolve_finds_the_only_gguf_of_a_folder(tmp_path):
    (tmp_path / "m.gguf").write_bytes(HEADER)
    assert resolve_gguf(tmp_path) == tmp_path / "m.gguf"
    assert resolve_gguf(tmp_path / "m.gguf") == tmp_path / "m.gguf"


def one_line_error(path, out) -> str:
    with pytest.raises(CheckpointError) as info:
        gguf_to_hf_folder(path, out)
    message = str(info.value)
    assert "\n" not in message
    assert not out.exists()
    return message


def test_missing_path(tmp_path):
    message = one_line_error(tmp_path / "nope.gguf", tmp_path / "out")
    assert "nope.gguf" in message and "no such file" in message


def test_folder_without_gguf(tmp_path):
    (tmp_path / "src").mkdir()
    message = one_line_error(tmp_path / "src", tmp_path / "out")
    assert "no .gguf file" in message


def test_folder_with_two_gguf_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.Q4_0.gguf").write_bytes(HEADER)
    (src / "a.Q8_0.gguf").write_bytes(HEADER)
    message = one_line_error(src, tmp_path / "out")
    assert "2 .gguf files" in message and "a.Q4_0.gguf" in message and "a.Q8_0.gguf" in message


@pytest.mark.parametrize("content", [b"PK\x03\x04 not gguf at all", b"GG", b""])
def test_bad_magic(tmp_path, content):
    (tmp_path / "fake.gguf").write_bytes(content)
    message = one_line_error(tmp_path / "fake.gguf", tmp_path / "out")
    assert "fake.gguf" in message and "not a GGUF file" in message


@pytest.mark.parametrize("missing", ["gguf", "accelerate"])
def test_missing_dependencies_name_the_extra(tmp_path, monkeypatch, missing):
    real = gguf_source.find_spec
    monkeypatch.setattr(gguf_source, "find_spec", lambda name: None if name == missing else real(name))
    (tmp_path / "m.gguf").write_bytes(HEADER)
    message = one_line_error(tmp_path / "m.gguf", tmp_path / "out")
    assert missing in message and "pip install 'bridge-core[gguf]'" in message


def test_existing_output_folder_is_refused(tmp_path):
    (tmp_path / "m.gguf").write_bytes(HEADER)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not empty"):
        gguf_to_hf_folder(tmp_path / "m.gguf", out)
    assert (out / "keep.txt").exists()


@pytest.mark.parametrize(
    "ids,new,fragment",
    [(torch.zeros(2, 3, dtype=torch.long), 4, "shape [1, seq]"), (torch.zeros(1, 3, dtype=torch.long), -1, ">= 0")],
)
def test_generate_checks_arguments_first(ids, new, fragment):
    from bridge_core.runtime.generation import greedy_generate

    with pytest.raises(ValueError, match=re.escape(fragment)):
        greedy_generate(torch.nn.Linear(1, 1), ids, new)
