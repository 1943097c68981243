"""``plan_layout``: each TP/PP/EP rank's parameters from the config alone (a meta-device model), against
hand arithmetic for a toy and for the real Llama-3.1-70B config, and against the model built for real."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")

import _training_plugin  # noqa: E402

from bridge_core.errors import ConfigError  # noqa: E402
from bridge_core.plugins.discovery import reset_registry  # noqa: E402
from bridge_core.runtime.parallelism import Parallelism  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def plugin():
    _training_plugin.use()
    yield
    reset_registry()


def _bridge(**values):
    from transformers import AutoConfig

    from bridge_core.conversion.auto_bridge import AutoBridge

    config = {**_training_plugin.TOY, **values}
    model_type = config.pop("model_type")
    return AutoBridge.from_hf_config(AutoConfig.for_model(model_type, architectures=["LlamaForCausalLM"], **config))


def _layer_params(h: int, ffn: int, heads: int, groups: int, d: int, tp: int) -> int:
    """One Llama layer's parameters on one tensor-parallel rank: split projections, whole norms."""
    qkv = (heads + 2 * groups) * d * h
    return (qkv + heads * d * h + 3 * h * ffn) // tp + 2 * h


def test_toy_at_tp2_pp2_by_hand():
    h, ffn, vocab = 64, 128, 256
    plan = plan_layout_of(_bridge(num_hidden_layers=4), Parallelism(tp=2, pp=2))
    layer = _layer_params(h, ffn, 4, 2, 16, 2)
    embedding = vocab // 2 * h  # 256 padded to a multiple of 128 x 2 = 256, then halved
    by_stage = {(s.tp_rank, s.pp_rank): s.params for s in plan.shares}
    assert by_stage[(0, 0)] == by_stage[(1, 0)] == embedding + 2 * layer
    assert by_stage[(0, 1)] == by_stage[(1, 1)] == 2 * layer + h + embedding  # final norm, output layer
    assert plan.total_params == 2 * embedding * 2 + 4 * _layer_params(h, ffn, 4, 2, 16, 1) + h


def test_at_one_rank_it_equals_the_model_built_for_real():
    from bridge_core.runtime.cpu_support import cuda_on_cpu
    from bridge_core.runtime.parallel import ParallelSizes, destroy_model_parallel, ensure_model_parallel

    bridge = _bridge()
    plan = plan_layout_of(bridge, Parallelism())
    with cuda_on_cpu():
        ensure_model_parallel(ParallelSizes())
        try:
            model = bridge.to_megatron_provider().provide_distributed_model(wrap_with_ddp=False)
            real = {n: tuple(p.shape) for n, p in model[0].named_parameters()}
        finally:
            destroy_model_parallel()
    assert {p.name: p.shape for p in plan.params} == real
    assert plan.shares[0].params == sum(torch.Size(s).numel() for s in real.values())
    assert all(p.hf_names for p in plan.params)  # every parameter maps to HF tensors


def test_llama31_70b_at_tp8_pp2_by_hand():
    """The real config (no weights anywhere): 80 layers, 8192 wide, 64/8 heads, FFN 28672, vocabulary 128256."""
    bridge = _bridge(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
        dtype="bfloat16",
    )
    plan = plan_layout_of(bridge, Parallelism(tp=8, pp=2), torch.bfloat16)
    layer = _layer_params(8192, 28672, 64, 8, 128, 8)
    rows = 129024 // 8  # 128256 padded to a multiple of 128 x 8 = 1024
    first = [s for s in plan.shares if s.pp_rank == 0]
    last = [s for s in plan.shares if s.pp_rank == 1]
    assert {s.params for s in first} == {rows * 8192 + 40 * layer}
    assert {s.params for s in last} == {40 * layer + 8192 + rows * 8192}
    norms = 40 * 2 * 8192 + 8192  # megatron-core's torch norms keep fp32 weights in a bf16 model
    assert plan.busiest().nbytes == 2 * (40 * layer + 8192 + rows * 8192 - norms) + 4 * norms
    assert round(plan.total_params / 1e9, 2) == 70.55
    # rank 0 of each stage also reads the row-parallel weights (o_proj, down_proj) whole, to scatter them
    reads = {s.tp_rank: s.read_bytes for s in last}
    assert reads[0] > reads[1] and len({reads[t] for t in range(1, 8)}) == 1


def test_a_layout_that_does_not_divide_is_one_line():
    with pytest.raises(ConfigError, match="--pp 3 does not divide the model's 2 layers"):
        plan_layout_of(_bridge(), Parallelism(pp=3))


def plan_layout_of(bridge, parallel, dtype=None):
    from bridge_core.conversion.layout_plan import plan_layout

    return plan_layout(bridge, parallel, dtype)
