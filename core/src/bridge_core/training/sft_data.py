"""SFT samples from a prepared set (``sft_files``): answer-only loss, optional packing.

Each example of ``n`` tokens gives ``n - 1`` (input, label, loss mask) positions, the loss mask being
the answer mask of the label. Without packing a sample is one example, cut to ``seq_length + 1``
tokens and padded (loss mask 0). With packing, examples follow one another in a sample (next-fit in
a seeded shuffled order) with position ids restarting at 0 and a block-diagonal causal attention
mask, so that no token sees another example: the loss equals the per-example one. Batches carry
what megatron-core's ``GPTDataset`` gives (``tokens``, ``labels``, ``loss_mask``, ``position_ids``,
``attention_mask`` ``[1, s, s]``, True = masked). Validation takes the examples ``data.split`` names
(contiguous ranges, as megatron-core splits documents).
"""

from __future__ import annotations

import math
from typing import Any

import numpy
import torch

from bridge_core.errors import DataError
from bridge_core.training import sft_files
from bridge_core.training.config import TrainingConfig


class SFTDataset:
    """``num_samples`` samples (whole epochs over the examples ``ids``, each epoch in its own seeded order)."""

    def __init__(
        self,
        tokens: Any,
        mask: Any,
        ids: numpy.ndarray,
        seq_length: int,
        packing: bool,
        seed: int,
        num_samples: int,
        pad_id: int,
    ):
        self.tokens, self.mask, self.seq, self.seed, self.pad = tokens, mask, seq_length, seed, pad_id
        ids = numpy.asarray(ids)  # a contiguous range of example indices
        lengths = numpy.minimum(tokens.sequence_lengths[ids] - 1, seq_length)  # positions each example fills
        order = ids[numpy.random.RandomState(seed).permutation(len(ids))] if packing else ids
        self.samples: list[list[int]] = []
        used = seq_length
        for doc in order:
            need = int(lengths[doc - ids[0]]) if packing else 0
            if not packing or used + need > seq_length:
                self.samples.append([])
                used = 0
            self.samples[-1].append(int(doc))
            used += need
        self.cut = int(numpy.sum(tokens.sequence_lengths[ids] - 1 > seq_length))
        self.filled = float(lengths.sum()) / (len(self.samples) * seq_length) if self.samples else 0.0
        self.epochs = max(1, math.ceil(num_samples / max(len(self.samples), 1)))
        self._orders: dict[int, numpy.ndarray] = {}

    def __len__(self) -> int:
        return self.epochs * len(self.samples)

    def _order(self, epoch: int) -> numpy.ndarray:
        if epoch not in self._orders:
            self._orders[epoch] = numpy.random.RandomState(self.seed + 1 + epoch).permutation(len(self.samples))
        return self._orders[epoch]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        epoch, k = divmod(index, len(self.samples))
        return self.sample(self.samples[int(self._order(epoch)[k])])

    def sample(self, docs: list[int]) -> dict[str, torch.Tensor]:
        """The examples ``docs`` one after another in one sequence, the rest padding."""
        s = self.seq
        tokens = numpy.full(s, self.pad, dtype=numpy.int64)
        labels = numpy.full(s, self.pad, dtype=numpy.int64)
        loss_mask = numpy.zeros(s, dtype=numpy.float32)
        positions = numpy.zeros(s, dtype=numpy.int64)
        masked = numpy.ones((s, s), dtype=bool)
        pos = 0
        for doc in docs:
            ids, answer = self.tokens[doc], self.mask[doc]
            n = min(len(ids) - 1, s - pos)
            tokens[pos : pos + n], labels[pos : pos + n] = ids[:n], ids[1 : n + 1]
            loss_mask[pos : pos + n] = answer[1 : n + 1]
            pos = _block(masked, positions, pos, n)
        _block(masked, positions, pos, s - pos)  # the padding attends to itself only
        return {
            "tokens": torch.from_numpy(tokens),
            "labels": torch.from_numpy(labels),
            "loss_mask": torch.from_numpy(loss_mask),
            "position_ids": torch.from_numpy(positions),
            "attention_mask": torch.from_numpy(masked).unsqueeze(0),
        }


def _block(masked: numpy.ndarray, positions: numpy.ndarray, start: int, n: int) -> int:
    """Open a causal block of ``n`` positions at ``start`` (positions 0..n-1); returns its end."""
    end = start + n
    masked[start:end, start:end] = ~numpy.tri(n, dtype=bool)
    positions[start:end] = numpy.arange(n)
    return end


def _split_ranges(split: str, n: int) -> list[tuple[int, int]]:
    """megatron-core's document ranges for ``data.split`` (train, validation, test)."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    try:
        matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    except (AssertionError, ValueError, ZeroDivisionError):
        raise DataError(f"data.split={split!r}: expected train,validation,test weights such as 98,2,0") from None
    return [(round(m[0] * n), round(m[1] * n)) if m else (0, 0) for m in matrix]


def build_sft_datasets(config: TrainingConfig, vocab_size: int, evals: int) -> tuple[Any, Any, str]:
    """The train and validation ``SFTDataset`` s (validation None when its split is empty) and a summary line."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    data, train = config.data, config.train
    prefix = data.sft_prefix
    if not prefix:
        raise DataError("data.kind=sft needs data.sft_prefix (the --output PREFIX of 'bridgectl data prepare')")
    manifest = sft_files.read_manifest(prefix)
    if int(manifest.get("vocab_size", 0)) > vocab_size:
        raise DataError(
            f"data.sft_prefix: {prefix} was tokenized with a vocabulary of {manifest['vocab_size']} tokens, "
            f"more than the model's {vocab_size} (another tokenizer?)"
        )
    tokens = IndexedDataset(sft_files.tokens_prefix(prefix), mmap=True)
    mask = IndexedDataset(sft_files.mask_prefix(prefix), mmap=True)
    if not numpy.array_equal(tokens.sequence_lengths, mask.sequence_lengths):
        raise DataError(f"data.sft_prefix: {prefix}_tokens and {prefix}_mask do not match (rerun data prepare)")
    n = len(tokens)
    (t0, t1), (v0, v1), _ = _split_ranges(data.split, n)
    if t1 <= t0:
        raise DataError(f"data.split={data.split!r} leaves no training examples of the {n} in {prefix}")
    pad = int(manifest.get("eos_token_id", 0))

    def dataset(first: int, end: int, num_samples: int) -> SFTDataset:
        ids = numpy.arange(first, end)
        return SFTDataset(tokens, mask, ids, train.seq_length, data.packing, train.seed, num_samples, pad)

    train_ds = dataset(t0, t1, train.iters * train.global_batch_size)
    valid_ds = dataset(v0, v1, evals) if v1 > v0 else None
    packed = f", packed into {len(train_ds.samples)} sequences ({train_ds.filled:.0%} filled)" if data.packing else ""
    cut = f"; {train_ds.cut} longer than train.seq_length+1 are cut" if train_ds.cut else ""
    summary = f"train: SFT data {prefix}: {n} examples, {t1 - t0} for training{packed}, {v1 - v0} for validation{cut}"
    return train_ds, valid_ds, summary
