"""``bridge_core.conversion.verify``: the library behind ``bridgectl verify``, without the command line."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")

import _test_bridges  # noqa: E402

from bridge_core.conversion.verify import (  # noqa: E402
    PROMPT_IDS,
    compare_logits,
    compare_tensors,
    fixed_prompt,
    load_for_verify,
)
from bridge_core.conversion.workflows import import_checkpoint  # noqa: E402
from bridge_core.plugins.discovery import reset_registry  # noqa: E402
from bridge_core.plugins.registry import Registry  # noqa: E402
from bridge_core.runtime.parallel import destroy_model_parallel  # noqa: E402
from bridge_core.runtime.parallelism import Parallelism  # noqa: E402
from bridge_core.testing.toy import ToyModel, build_toy  # noqa: E402
from bridge_core.testing.toys import TINY_LLAMA  # noqa: E402


@pytest.fixture(autouse=True)
def plugin():
    registry = Registry()
    registry.add_plugin(_test_bridges, name="test-bridges", strict=True)
    reset_registry(registry)
    yield
    destroy_model_parallel()
    reset_registry()


@pytest.fixture
def toy_checkpoint(tmp_path):
    hf = build_toy(ToyModel("LlamaForCausalLM", TINY_LLAMA), tmp_path / "hf")
    try:
        import_checkpoint(hf, tmp_path / "ckpt", Parallelism())
    finally:
        destroy_model_parallel()
    return hf, tmp_path / "ckpt"


def verify(hf, ckpt, atol=1e-4):
    loaded = load_for_verify(ckpt, Parallelism(), hf)
    assert all(p.dtype == torch.float32 for p in loaded.model[0].parameters())
    return compare_tensors(loaded), compare_logits(loaded, hf, atol)


def test_the_prompt_is_fixed_and_inside_the_vocabulary():
    ids = fixed_prompt(100)
    assert ids.shape == (1, PROMPT_IDS) and int(ids.max()) < 100
    assert torch.equal(ids, fixed_prompt(100))


def test_a_checkpoint_matches_its_source(toy_checkpoint):
    tensors, logits = verify(*toy_checkpoint)
    assert tensors.ok and tensors.identical == tensors.exported == tensors.source > 0
    assert logits.ok and logits.max_diff <= 1e-4 and logits.nonfinite is None


def test_another_model_differs_in_every_tensor_and_in_the_logits(toy_checkpoint, tmp_path):
    _, ckpt = toy_checkpoint
    other = build_toy(ToyModel("LlamaForCausalLM", TINY_LLAMA, seed=7), tmp_path / "other")
    tensors, logits = verify(other, ckpt)
    assert not tensors.ok and tensors.identical == 0 and len(tensors.differing) == tensors.source
    assert not logits.ok and logits.max_diff > 1e-4 and logits.mean_diff > 0
