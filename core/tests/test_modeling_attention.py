"""``bridge_core.modeling``: the SDPA core attention against megatron-core's local attention and an
explicit reference with transformers' sliding-window rule, and its installation into layer specs."""

from __future__ import annotations

import math

import pytest
import torch
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

from bridge_core.errors import ConfigError
from bridge_core.modeling.attention import SDPACoreAttention, window_mask
from bridge_core.modeling.specs import SDPAAttentionProvider, install_core_attention, sdpa_layer_spec
from bridge_core.runtime.cpu_support import causal_mask
from bridge_core.runtime.parallel import ParallelSizes, destroy_model_parallel, ensure_model_parallel

HEADS, GROUPS, DIM, SEQ, BATCH = 6, 2, 16, 20, 2
# megatron-core's local attention takes its score buffer from a CUDA memory pool when CUDA is visible
LOCAL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def world_of_one():
    ensure_model_parallel(ParallelSizes(tp=1, pp=1))
    yield
    destroy_model_parallel()


def config(**overrides) -> TransformerConfig:
    values = dict(
        num_layers=2,
        hidden_size=HEADS * DIM,
        num_attention_heads=HEADS,
        num_query_groups=GROUPS,
        kv_channels=DIM,
        use_cpu_initialization=True,
        masked_softmax_fusion=False,
        attention_dropout=0.0,
    )
    return TransformerConfig(**{**values, **overrides})


def qkv(sq: int = SEQ, sk: int = SEQ, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(sq, BATCH, HEADS, DIM, generator=gen)
    k = torch.randn(sk, BATCH, GROUPS, DIM, generator=gen)
    v = torch.randn(sk, BATCH, GROUPS, DIM, generator=gen)
    return q, k, v


def build(cls, cfg: TransformerConfig, layer: int = 1, **kwargs):
    return cls(cfg, layer, AttnMaskType.causal, "self", softmax_scale=cfg.softmax_scale, **kwargs).eval()


def reference(q, k, v, allowed, scale, cap=None):
    """softmax(scale q k^T [capped]) v with ``allowed[i, j]`` (True = key j visible to query i); [s, b, h*d]."""
    rep = HEADS // GROUPS
    q, k, v = q.permute(1, 2, 0, 3), k.repeat_interleave(rep, 2).permute(1, 2, 0, 3), v.repeat_interleave(rep, 2)
    scores = q @ k.transpose(-1, -2) * scale
    if cap is not None:
        scores = cap * torch.tanh(scores / cap)
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    out = probs @ v.permute(1, 2, 0, 3)
    return out.permute(2, 0, 1, 3).reshape(q.size(2), BATCH, -1)


def hf_sliding_allowed(sq: int, sk: int, window: int) -> torch.Tensor:
    """transformers' rule (masking_utils: causal and ``kv_idx > q_idx - sliding_window``), queries at the end."""
    from transformers.masking_utils import sliding_window_causal_mask_function

    rule = sliding_window_causal_mask_function(window)
    t = torch.tensor
    return torch.tensor([[bool(rule(t(0), t(0), t(sk - sq + i), t(j))) for j in range(sk)] for i in range(sq)])


@pytest.mark.parametrize("mask", ["explicit", "none"])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_matches_local_dot_product_attention_without_a_window(mask, scale):
    cfg = config(softmax_scale=scale)
    q, k, v = (t.to(LOCAL_DEVICE) for t in qkv())
    causal = causal_mask(SEQ, LOCAL_DEVICE)
    attention_mask = causal if mask == "explicit" else None
    local = build(DotProductAttention, cfg).to(LOCAL_DEVICE)(q, k, v, causal)
    ours = build(SDPACoreAttention, cfg).to(LOCAL_DEVICE)(q, k, v, attention_mask)
    assert ours.shape == (SEQ, BATCH, HEADS * DIM)
    assert (ours - local).abs().max().item() <= 1e-5
    assert (ours - local).abs().max().item() < (ours - ours.roll(1, 0)).abs().max().item()  # not trivially equal


def test_padding_mask_is_applied_like_local():
    cfg = config()
    q, k, v = (t.to(LOCAL_DEVICE) for t in qkv())
    mask = causal_mask(SEQ, LOCAL_DEVICE).expand(BATCH, 1, SEQ, SEQ).clone()
    mask[0, :, :, :3] = True  # batch 0: the first three keys are padding
    mask[0, :, :3, 0] = False  # (rows that would be empty keep one key)
    local = build(DotProductAttention, cfg).to(LOCAL_DEVICE)(q, k, v, mask)
    ours = build(SDPACoreAttention, cfg).to(LOCAL_DEVICE)(q, k, v, mask)
    assert (ours - local).abs().max().item() <= 1e-5


@pytest.mark.parametrize("sq,sk", [(SEQ, SEQ), (1, SEQ), (5, SEQ)])
def test_sliding_window_follows_transformers(sq, sk):
    window = 8  # HF sliding_window; megatron-core window_size (7, 0)
    cfg = config(window_size=(window - 1, 0))
    q, k, v = qkv(sq, sk)
    mask = causal_mask(sq) if sq == sk else None
    ours = build(SDPACoreAttention, cfg)(q, k, v, mask)
    want = reference(q, k, v, hf_sliding_allowed(sq, sk, window), 1 / math.sqrt(DIM))
    assert (ours - want).abs().max().item() <= 1e-5
    if sk > window:  # the window matters: plain causal attention is far off
        plain = reference(q, k, v, hf_sliding_allowed(sq, sk, sk + 1), 1 / math.sqrt(DIM))
        assert (ours - plain).abs().max().item() > 1e-2


def test_window_mask_equals_megatron_rule():
    # megatron-core's get_sliding_window_causal_mask, rebuilt on the CPU (it hard-codes device="cuda").
    for sq, sk, w in [(6, 6, (2, 0)), (2, 7, (3, 0)), (5, 5, (1, 1))]:
        m = torch.ones(sq, sk, dtype=torch.bool)
        expected = ~torch.tril(torch.triu(m, diagonal=sk - sq - w[0]), diagonal=sk - sq + w[1])
        assert torch.equal(window_mask(sq, sk, w, torch.device("cpu")), expected)


def test_window_pattern_follows_window_attn_skip_freq():
    cfg = config(window_size=(3, 0), window_attn_skip_freq=[1, 0])
    assert build(SDPACoreAttention, cfg, layer=1).window == (3, 0)
    assert build(SDPACoreAttention, cfg, layer=2).window is None


def test_logit_softcap_caps_scores_before_the_mask():
    cfg = config()
    q, k, v = qkv()
    q = q * 4  # scores well beyond the cap
    ours = build(SDPACoreAttention, cfg, logit_softcap=0.5)(q, k, v, causal_mask(SEQ))
    allowed = ~causal_mask(SEQ)[0, 0]
    want = reference(q, k, v, allowed, 1 / math.sqrt(DIM), cap=0.5)
    assert (ours - want).abs().max().item() <= 1e-5
    assert (ours - reference(q, k, v, allowed, 1 / math.sqrt(DIM))).abs().max().item() > 1e-2


def test_dropout_only_in_training():
    cfg = config(attention_dropout=0.5)
    q, k, v = qkv()
    module = build(SDPACoreAttention, cfg)
    plain = module(q, k, v, None)
    assert torch.equal(module(q, k, v, None), plain)
    module.train()
    assert not torch.allclose(module(q, k, v, None), plain)


def test_unsupported_inputs_are_refused():
    cfg = config()
    q, k, v = qkv()
    with pytest.raises(ConfigError, match="attention_bias"):
        build(SDPACoreAttention, cfg)(q, k, v, None, attention_bias=torch.zeros(1))
    with pytest.raises(ConfigError, match="softmax_type='learnable'"):
        build(SDPACoreAttention, config(softmax_type="learnable"))


def test_a_subclass_declares_the_softmax_types_it_computes():
    class Sinks(SDPACoreAttention):
        SOFTMAX_TYPES = ("learnable",)

    assert build(Sinks, config(softmax_type="learnable")).eager is False  # builds; the subclass does the softmax
    with pytest.raises(ConfigError, match="softmax_type='vanilla'"):
        build(Sinks, config())


def test_install_into_local_and_moe_block_specs():
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_layer_local_spec

    local = get_gpt_layer_local_spec()
    installed = install_core_attention(local, logit_softcap=30.0)
    assert local.submodules.self_attention.submodules.core_attention is DotProductAttention  # a copy
    builder = installed.submodules.self_attention.submodules.core_attention
    assert builder.func is SDPACoreAttention and builder.keywords == {"logit_softcap": 30.0}
    moe = config(num_moe_experts=2, moe_router_topk=2, moe_grouped_gemm=False)
    block = get_gpt_decoder_block_spec(moe, use_transformer_engine=False, normalization="RMSNorm")
    cores = [s.submodules.self_attention.submodules.core_attention for s in install_core_attention(block).layer_specs]
    assert cores == [SDPACoreAttention, SDPACoreAttention]


@pytest.mark.parametrize(
    "choice,window,expected",
    [
        ("auto", None, DotProductAttention),
        ("auto", (7, 0), SDPACoreAttention),
        ("sdpa", None, SDPACoreAttention),
        ("local", None, DotProductAttention),
    ],
)
def test_provider_uses_sdpa_where_needed(choice, window, expected):
    provider = SDPAAttentionProvider(
        num_layers=2,
        hidden_size=96,
        num_attention_heads=6,
        vocab_size=100,
        transformer_layer_spec="local",
        core_attention=choice,
        window_size=window,
    )
    assert provider.layer_spec().submodules.self_attention.submodules.core_attention is expected
    local = sdpa_layer_spec(provider)
    assert local.submodules.self_attention.submodules.core_attention is SDPACoreAttention
    provider.core_attention = "flash"
    with pytest.raises(ConfigError, match="core_attention must be one of auto, sdpa, local, got 'flash'"):
        provider.layer_spec()


def test_whole_model_with_sdpa_matches_the_local_spec():
    from bridge_core.model.provider import GPTModelProvider
    from bridge_core.runtime.inference import forward_logits

    def model(spec):
        provider = GPTModelProvider(
            num_layers=2,
            hidden_size=HEADS * DIM,
            num_attention_heads=HEADS,
            num_query_groups=GROUPS,
            ffn_hidden_size=64,
            vocab_size=100,
            seq_length=SEQ,
            normalization="RMSNorm",
            gated_linear_unit=True,
            transformer_layer_spec=spec,
        )
        torch.manual_seed(0)
        return provider.provide_distributed_model(wrap_with_ddp=False)

    local, sdpa = model("local"), model(sdpa_layer_spec)
    assert isinstance(sdpa[0].decoder.layers[0].self_attention.core_attention, SDPACoreAttention)
    sdpa[0].load_state_dict(local[0].state_dict())
    ids = torch.randint(0, 100, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    diff = (forward_logits(sdpa, ids, vocab_size=100) - forward_logits(local, ids, vocab_size=100)).abs().max()
    assert diff.item() <= 1e-5
