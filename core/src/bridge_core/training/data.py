"""Training data through megatron-core's datasets: mock documents, indexed (``.bin/.idx``) prefixes, or
a prepared SFT set (``sft_data``).

``BlendedMegatronDatasetBuilder`` builds the train/validation splits; the sampler below hands each
data-parallel rank its micro-batches of every global batch in Megatron-LM's order, starting at the
consumed-samples position (so a resumed run reads exactly the samples the uninterrupted one would).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from bridge_core.errors import ConfigError
from bridge_core.training.config import TrainingConfig


def _blend(paths: list[str]) -> tuple[list[str], list[float] | None]:
    """Megatron-LM's ``--data-path``: ``prefix ...`` or ``weight prefix weight prefix ...``."""
    try:
        float(paths[0])
    except ValueError:
        return list(paths), None
    if len(paths) % 2:
        raise ConfigError(f"data.paths: weighted form needs weight,prefix pairs, got {len(paths)} items")
    try:
        weights = [float(w) for w in paths[0::2]]
    except ValueError as exc:
        raise ConfigError(f"data.paths: {exc}") from None
    return list(paths[1::2]), weights


def check_dataset_helpers() -> None:
    """megatron-core's GPT datasets need its compiled ``helpers_cpp``; say so in one line when it does not load."""
    try:
        from megatron.core.datasets import helpers_cpp  # noqa: F401
    except ImportError as exc:
        import sys

        from megatron.core import package_info

        raise ConfigError(
            f"megatron-core {package_info.__version__}'s compiled dataset helpers (helpers_cpp) do not load in "
            f"Python {sys.version_info.major}.{sys.version_info.minor} ({exc}); install the megatron-core wheel "
            "built for this Python"
        ) from None


def build_datasets(config: TrainingConfig, vocab_size: int) -> tuple[Any, Any]:
    """The train and validation datasets (validation may be None) for ``config.data``."""
    from pathlib import Path

    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset
    from megatron.core.tokenizers.text.libraries.null_tokenizer import NullTokenizer

    data, train = config.data, config.train
    check_dataset_helpers()
    evals = 0
    if train.eval_interval:
        evals = (train.iters // train.eval_interval + 1) * train.eval_iters * train.global_batch_size
    if data.kind == "sft":
        import torch.distributed as dist

        from bridge_core.training.sft_data import build_sft_datasets

        train_ds, valid_ds, summary = build_sft_datasets(config, vocab_size, evals)
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(summary, flush=True)
        return train_ds, valid_ds
    blend = None
    if data.kind == "pretrain":
        prefixes, weights = _blend(data.paths)
        for prefix in prefixes:
            for suffix in (".bin", ".idx"):
                if not Path(prefix + suffix).is_file():
                    raise ConfigError(f"data.paths: {prefix}{suffix} does not exist (an indexed dataset prefix)")
        blend = (prefixes, weights)
    gpt_config = GPTDatasetConfig(
        random_seed=train.seed,
        sequence_length=train.seq_length,
        blend=blend,
        split=data.split,
        tokenizer=NullTokenizer(vocab_size - 1),  # ids 0..vocab-2, end of document vocab-1 (mock data)
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=True,
        mmap_bin_files=True,
    )
    cls = MockGPTDataset if data.kind == "mock" else GPTDataset
    sizes = [train.iters * train.global_batch_size, evals, 0]
    train_ds, valid_ds, _ = BlendedMegatronDatasetBuilder(cls, sizes, lambda: True, gpt_config).build()
    return train_ds, valid_ds


def batches(
    dataset: Any, consumed: int, micro_batch_size: int, dp_rank: int, dp_size: int, num_microbatches: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Micro-batches for this data-parallel rank, from sample ``consumed`` on (Megatron-LM's order).

    Global batch ``g`` is samples ``[start, start + GBS)``; within it, micro-batch ``m`` of rank ``r``
    is the ``mbs`` samples at ``start + (m * dp_size + r) * mbs``.
    """
    position = consumed
    n = len(dataset)
    while True:
        for m in range(num_microbatches):
            first = position + (m * dp_size + dp_rank) * micro_batch_size
            items = [dataset[(first + i) % n] for i in range(micro_batch_size)]
            yield {key: torch.stack([torch.as_tensor(item[key]) for item in items]) for key in items[0]}
        position += num_microbatches * dp_size * micro_batch_size
