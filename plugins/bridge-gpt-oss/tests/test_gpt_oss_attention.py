"""``SinkCoreAttention`` against megatron-core's own learnable-softmax ``DotProductAttention`` (causal,
no window: the case the local module can run on a CPU) and against an explicit sliding-window reference."""

from __future__ import annotations

import pytest
import torch
from bridge_core.runtime.cpu_support import causal_mask
from bridge_core.runtime.parallel import ParallelSizes, destroy_model_parallel, ensure_model_parallel
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

from bridge_gpt_oss.modeling_gpt_oss.attention import SinkCoreAttention

HEADS, GROUPS, DIM, SEQ, BATCH = 4, 2, 8, 12, 2


@pytest.fixture(autouse=True)
def world_of_one():
    ensure_model_parallel(ParallelSizes(tp=1, pp=1))
    yield
    destroy_model_parallel()


def config(**overrides) -> TransformerConfig:
    values = dict(
        num_layers=1,
        hidden_size=HEADS * DIM,
        num_attention_heads=HEADS,
        num_query_groups=GROUPS,
        kv_channels=DIM,
        use_cpu_initialization=True,
        masked_softmax_fusion=False,
        attention_dropout=0.0,
        softmax_type="learnable",
    )
    return TransformerConfig(**{**values, **overrides})


def inputs():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(SEQ, BATCH, HEADS, DIM, generator=gen)
    k = torch.randn(SEQ, BATCH, GROUPS, DIM, generator=gen)
    v = torch.randn(SEQ, BATCH, GROUPS, DIM, generator=gen)
    return q, k, v, torch.randn(HEADS, generator=gen) * 2


def build(cls, cfg):
    module = cls(cfg, 1, AttnMaskType.causal, "self").eval()
    return module


def test_equals_megatron_cores_learnable_softmax():
    device = "cuda" if torch.cuda.is_available() else "cpu"  # megatron-core's attention buffers live on a visible GPU
    q, k, v, sinks = (t.to(device) for t in inputs())
    ours, theirs = (build(cls, config()).to(device) for cls in (SinkCoreAttention, DotProductAttention))
    with torch.no_grad():
        ours.softmax_offset.copy_(sinks)
        theirs.softmax_offset.copy_(sinks)
    mask = causal_mask(SEQ).to(device)
    got, want = ours(q, k, v, mask), theirs(q, k, v, mask)
    assert (got - want).abs().max().item() < 1e-6
    with torch.no_grad():
        ours.softmax_offset.fill_(float("-inf"))  # no sink: plain attention
    plain = build(SinkCoreAttention, config())
    assert not torch.allclose(got, ours(q, k, v, mask))
    assert plain.softmax_offset.tensor_model_parallel and plain.softmax_offset.partition_dim == 0


def test_sliding_window_with_sinks_matches_an_explicit_reference():
    q, k, v, sinks = inputs()
    module = build(SinkCoreAttention, config(window_size=(3, 0)))
    with torch.no_grad():
        module.softmax_offset.copy_(sinks)
    got = module(q, k, v, causal_mask(SEQ))
    rep = HEADS // GROUPS
    qh = q.permute(1, 2, 0, 3)
    kh, vh = (t.permute(1, 2, 0, 3).repeat_interleave(rep, dim=1) for t in (k, v))
    scores = qh @ kh.transpose(-1, -2) / DIM**0.5
    i, j = torch.arange(SEQ)[:, None], torch.arange(SEQ)[None, :]
    scores = scores.masked_fill((j > i) | (j < i - 3), float("-inf"))
    logits = torch.cat([scores, sinks.view(1, HEADS, 1, 1).expand(BATCH, HEADS, SEQ, 1)], dim=-1)
    want = (torch.softmax(logits, dim=-1)[..., :-1] @ vh).permute(2, 0, 1, 3).reshape(SEQ, BATCH, HEADS * DIM)
    assert (got - want).abs().max().item() < 1e-6
