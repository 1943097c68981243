"""``bridgectl data prepare``: a JSONL file tokenized into megatron-core indexed datasets.

``pretrain``: each line's ``text``, tokenized with the tokenizer's special tokens and the EOS token
appended (Megatron-LM's ``--append-eod``), into ``PREFIX.bin/.idx`` (``data.kind=pretrain data.paths=PREFIX``).
``sft``: each line a chat (``messages``, rendered with the tokenizer's chat template; the answer is
every assistant turn as the template writes it, end-of-turn token included) or a ``prompt``/``completion``
pair (completion + EOS is the answer), into the set described in ``sft_files``.

Files are written into a hidden sibling folder and moved into place only when every line was read,
the index files last; a bad line stops the run with nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge_core.checkpoints.output_dir import fsync_path, output_lock, remove_stale, writing_to
from bridge_core.checkpoints.tokenizer_check import VOCABULARY_FILES, has_tokenizer
from bridge_core.errors import DataError
from bridge_core.progress import Progress
from bridge_core.training import sft_files

FORMATS = ("pretrain", "sft")


@dataclass
class Prepared:
    examples: int
    tokens: int
    answer_tokens: int | None
    files: list[Path]
    seconds: float


def load_tokenizer(folder: str | Path) -> Any:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--tokenizer {folder}: no such folder (an HF folder with the tokenizer files)")
    if not has_tokenizer(folder):
        raise DataError(
            f"--tokenizer {folder}: no tokenizer files in it (missing all of {', '.join(VOCABULARY_FILES)})"
        )
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # transformers raises many kinds for broken files
        raise DataError(f"--tokenizer {folder}: transformers cannot load it: {' '.join(str(exc).split())}") from None
    if tokenizer.eos_token_id is None:
        raise DataError(f"--tokenizer {folder}: the tokenizer has no eos_token (set it in tokenizer_config.json)")
    return tokenizer


def _output_files(prefix: Path, fmt: str) -> list[Path]:
    if fmt == "sft":
        return sft_files.sft_files(prefix)
    return [Path(f"{prefix}.bin"), Path(f"{prefix}.idx")]


class _Encoder:
    """One JSONL row -> (token ids, answer mask or None); errors name ``where`` (file:line)."""

    def __init__(self, tokenizer: Any, folder: Path, fmt: str):
        self.tokenizer, self.folder, self.fmt = tokenizer, folder, fmt
        self.eos = int(tokenizer.eos_token_id)

    def __call__(self, row: Any, where: str) -> tuple[list[int], list[int] | None]:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        if self.fmt == "pretrain":
            text = row.get("text")
            if not isinstance(text, str) or not text:
                raise DataError(f'{where}: expected a non-empty "text" string (pretrain format)')
            ids = list(self.tokenizer(text).input_ids)
            return (ids if ids and ids[-1] == self.eos else [*ids, self.eos]), None
        if "messages" in row:
            return self._chat(row["messages"], where)
        if "prompt" in row or "completion" in row:
            return self._pair(row.get("prompt"), row.get("completion"), where)
        raise DataError(
            f'{where}: expected "messages" (a list of {{"role", "content"}}) or "prompt" and "completion" (sft format)'
        )

    def _pair(self, prompt: Any, completion: Any, where: str) -> tuple[list[int], list[int]]:
        if not isinstance(prompt, str) or not isinstance(completion, str) or not completion:
            raise DataError(f'{where}: "prompt" must be a string and "completion" a non-empty string')
        head = list(self.tokenizer(prompt).input_ids) if prompt else []
        answer = [*self.tokenizer(completion, add_special_tokens=False).input_ids, self.eos]
        return head + answer, [0] * len(head) + [1] * len(answer)

    def _render(self, messages: list, generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _chat(self, messages: Any, where: str) -> tuple[list[int], list[int]]:
        if not isinstance(messages, list) or not messages:
            raise DataError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects')
        for i, m in enumerate(messages):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise DataError(f'{where}: messages[{i}] must be an object with "role" and "content" strings')
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f'{where}: no message has role "assistant" (the answer to learn)')
        if not getattr(self.tokenizer, "chat_template", None):
            raise DataError(
                f"{where}: chat messages need a chat template, and the tokenizer in {self.folder} has none "
                "(chat_template.jinja); use prompt/completion pairs instead"
            )
        text = self._render(messages)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before, through = self._render(messages[:i], True), self._render(messages[: i + 1])
            if not (through.startswith(before) and text.startswith(through)):
                raise DataError(
                    f"{where}: the chat template of {self.folder} does not render this conversation turn by turn "
                    f"(messages[{i}]), so its answer cannot be located; use prompt/completion pairs"
                )
            spans.append((len(before), len(through)))
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        mask = [int(any(a <= start < b for a, b in spans)) for start, _end in encoded["offset_mapping"]]
        if not any(mask):
            raise DataError(f"{where}: the assistant messages are empty (no answer tokens)")
        return list(encoded["input_ids"]), mask


def prepare(
    tokenizer_dir: str | Path,
    input_file: str | Path,
    output: str | Path,
    fmt: str = "pretrain",
    overwrite: bool = False,
) -> Prepared:
    """Tokenize ``input_file`` (JSONL) into the files of ``fmt`` at ``output`` (a path prefix)."""
    import numpy
    import torch
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    if fmt not in FORMATS:
        raise DataError(f"--format {fmt!r} is not valid; expected {' | '.join(FORMATS)}")
    source = Path(input_file)
    if not source.is_file():
        raise DataError(f"--input {source}: no such file (a JSONL file, one example per line)")
    prefix = Path(os.path.abspath(output))
    if not prefix.name or prefix.name.startswith("."):
        raise DataError(f"--output {output}: give a path prefix such as data/train (files PREFIX.bin ...)")
    targets = _output_files(prefix, fmt)
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise DataError(f"--output {output}: {existing[0]} exists; pass --overwrite to replace it")
    tokenizer = load_tokenizer(tokenizer_dir)
    encode = _Encoder(tokenizer, Path(tokenizer_dir), fmt)
    vocab = len(tokenizer)
    start = time.perf_counter()
    with open(source, "rb") as f:
        total_lines = sum(1 for _ in f)
    progress = Progress("data prepare", unit="lines", stage=f"tokenizing {source}")
    with writing_to(output):
        prefix.parent.mkdir(parents=True, exist_ok=True)
        with output_lock(prefix):
            remove_stale(prefix)
            tmp = prefix.parent / f".{prefix.name}.partial-{os.getpid()}"
            tmp.mkdir()
            try:
                staged = tmp / prefix.name
                names = (
                    [sft_files.tokens_prefix(staged), sft_files.mask_prefix(staged)] if fmt == "sft" else [str(staged)]
                )
                dtypes = [DType.optimal_dtype(vocab), numpy.uint8]
                builders = [IndexedDatasetBuilder(f"{n}.bin", dtype=d) for n, d in zip(names, dtypes)]
                examples = tokens = answer = 0
                progress.begin(total_lines, source.stat().st_size)
                with open(source, encoding="utf-8") as f:
                    for number, line in enumerate(f, 1):
                        where = f"{source}:{number}"
                        if not line.strip():
                            raise DataError(f"{where}: empty line (one JSON object per line expected)")
                        try:
                            row = json.loads(line)
                        except ValueError as exc:
                            raise DataError(f"{where}: not valid JSON ({exc})") from None
                        ids, mask = encode(row, where)
                        if max(ids) >= numpy.iinfo(dtypes[0]).max:
                            raise DataError(f"{where}: token id {max(ids)} does not fit the tokenizer's vocabulary")
                        for builder, values in zip(builders, (ids, mask)):
                            builder.add_item(torch.tensor(values))
                            builder.end_document()
                        examples += 1
                        tokens += len(ids)
                        answer += sum(mask) if mask else 0
                        progress.update(len(line.encode()))
                progress.finish()
                if not examples:
                    raise DataError(f"{source}: the file is empty (one JSON object per line expected)")
                for builder, name in zip(builders, names):
                    builder.finalize(f"{name}.idx")
                if fmt == "sft":
                    manifest = {
                        "format": sft_files.FORMAT,
                        "source": str(source),
                        "tokenizer": str(tokenizer_dir),
                        "vocab_size": vocab,
                        "eos_token_id": encode.eos,
                        "examples": examples,
                        "tokens": tokens,
                        "answer_tokens": answer,
                    }
                    sft_files.manifest_path(staged).write_text(json.dumps(manifest, indent=2) + "\n")
                _move_into_place(tmp, prefix.parent, [p.name for p in targets])
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return Prepared(examples, tokens, answer if fmt == "sft" else None, targets, time.perf_counter() - start)


def _move_into_place(tmp: Path, folder: Path, names: list[str]) -> None:
    """Old outputs removed (the last-written first), then the new ones renamed in, the last one last."""
    for name in names:
        fsync_path(tmp / name)
    for name in reversed(names):
        (folder / name).unlink(missing_ok=True)
    for name in names:
        os.rename(tmp / name, folder / name)
    fsync_path(folder)
