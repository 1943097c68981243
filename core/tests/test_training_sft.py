"""SFT training: Megatron's loss (answer tokens only, with and without packing, and the validation
loss) equals transformers' masked cross-entropy on the same weights and examples, one at a time."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core.datasets.helpers_cpp")
pytest.importorskip("tokenizers")

import _sft_toys  # noqa: E402
import _training_plugin  # noqa: E402

from bridge_core.plugins.discovery import reset_registry  # noqa: E402
from bridge_core.runtime.parallel import destroy_model_parallel  # noqa: E402
from bridge_core.training import sft_files  # noqa: E402
from bridge_core.training.data_prepare import prepare  # noqa: E402
from bridge_core.training.recipe import load_recipe  # noqa: E402
from bridge_core.training.trainer import train  # noqa: E402

SEQ = 64
ROWS = [
    _sft_toys.chat("Who founded Zorblat?", "Quillon Marvek."),
    _sft_toys.chat("2+2?", "4"),
    {"prompt": "The capital of France is", "completion": " Paris."},
    _sft_toys.chat("Say something long.", "This answer is longer than the sequence, so it is cut " * 2),
    _sft_toys.chat("hi", "hello there"),
    _sft_toys.chat("Which colour is the sky?", "Blue, mostly."),
]


@pytest.fixture(scope="module", autouse=True)
def plugin():
    _training_plugin.use()
    yield
    reset_registry()


def _toy_and_set(work, **config):
    """An HF toy with the byte tokenizer, and its SFT set (6 examples: 5 train, 1 validation)."""
    from bridge_core.testing.toy import ToyModel, build_toy

    hf = build_toy(ToyModel("LlamaForCausalLM", {**_sft_toys.TOY, **config}), work / "hf")
    _sft_toys.save_tokenizer(hf)
    prepare(hf, _sft_toys.write_jsonl(work / "train.jsonl", ROWS), work / "data" / "sft", "sft")
    return hf, work / "data" / "sft"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return _toy_and_set(tmp_path_factory.mktemp("sft"))


def _train(hf, prefix, save, packing: bool, gbs: int):
    recipe = load_recipe("toy_sft").with_overrides(_overrides(prefix, save, packing, gbs))
    try:
        return train(recipe, hf_model=hf)
    finally:
        destroy_model_parallel()


def _overrides(prefix, save, packing: bool, gbs: int) -> list[str]:
    return [
        f"checkpoint.save={save}",
        f"data.sft_prefix={prefix}",
        "data.kind=sft",
        f"data.packing={packing}",
        "data.split=5,1,0",
        f"train.seq_length={SEQ}",
        "train.iters=1",
        f"train.global_batch_size={gbs}",
        "train.micro_batch_size=1",
        "train.eval_interval=1",
        "train.eval_iters=1",
        "optimizer.lr=0",
        "optimizer.min_lr=0",
        "scheduler.lr_warmup_iters=0",
        "precision.dtype=fp32",
    ]


def _reference_loss(hf, prefix, examples: range) -> float:
    """transformers' cross-entropy over the answer tokens of ``examples``, each example alone (cut at SEQ+1)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    tokens = IndexedDataset(sft_files.tokens_prefix(prefix))
    masks = IndexedDataset(sft_files.mask_prefix(prefix))
    total, count = 0.0, 0.0
    with torch.no_grad():
        for i in examples:
            ids = torch.tensor(tokens[i][: SEQ + 1].astype("int64"))
            mask = torch.tensor(masks[i][1 : SEQ + 1].astype("float64"))
            logits = model(ids[None, :-1]).logits[0].double()
            ce = torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none")
            total += float((ce * mask).sum())
            count += float(mask.sum())
    return total / count


@pytest.mark.parametrize("packing", [False, True], ids=["unpacked", "packed"])
def test_sft_loss_equals_transformers_masked_cross_entropy(toy, tmp_path, packing):
    from bridge_core.training.data import build_datasets

    hf, prefix = toy
    recipe = load_recipe("toy_sft").with_overrides(_overrides(prefix, tmp_path / "run", packing, 1))
    train_ds, valid_ds = build_datasets(recipe.config, _sft_toys.TOY["vocab_size"])
    samples = len(train_ds.samples)  # one global batch = every training sample once
    assert samples == 5 if not packing else samples < 5
    if packing:
        sample = train_ds.sample(train_ds.samples[next(i for i, s in enumerate(train_ds.samples) if len(s) > 1)])
        starts = (sample["position_ids"] == 0).nonzero().flatten().tolist()
        assert len(starts) >= 3  # two examples and the padding, each from position 0
        a, b = starts[1], starts[2]
        masked = sample["attention_mask"][0]
        assert masked[a, a - 1] and masked[a, 0] and not masked[a, a] and not masked[b - 1, a]  # block-diagonal
    result = _train(hf, prefix, tmp_path / "run", packing, samples)
    want = _reference_loss(hf, prefix, range(5))
    assert abs(result.losses[1] - want) < 1e-5, (result.losses[1], want)
    import json

    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(row["val_loss"] - _reference_loss(hf, prefix, range(5, 6))) < 1e-5


def test_a_vocabulary_megatron_pads_trains_with_transformers_loss(tmp_path):
    """272 tokens, allocated as 384: the padded rows' logits must take no probability."""
    hf, prefix = _toy_and_set(tmp_path, vocab_size=272)
    result = _train(hf, prefix, tmp_path / "run", False, 5)
    want = _reference_loss(hf, prefix, range(5))
    assert abs(result.losses[1] - want) < 1e-5, (result.losses[1], want)
