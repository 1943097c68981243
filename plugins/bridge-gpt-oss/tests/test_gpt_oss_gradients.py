"""Gradients through the Megatron model equal transformers' (fp32, TP=1): the sinks, the router bias,
the expert biases and weights (megatron-core 0.16 adds expert biases in place, which autograd refuses
without ``ExpertRowParallelLinear``), on the toy whose window, sinks and clamp all bind."""

from __future__ import annotations

import pytest
import torch
from bridge_core import AutoBridge
from bridge_core.runtime.cpu_support import causal_mask
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.toy import ToyModel, sample_ids
from gpt_oss_toys import GPT_OSS, randomised_copy

from bridge_gpt_oss.bridge import deinterleave

SEQ, VOCAB = 32, GPT_OSS["vocab_size"]


@pytest.fixture(scope="module")
def gpt_oss(toy_model_factory, tmp_path_factory):
    return randomised_copy(toy_model_factory(ToyModel("GptOssForCausalLM", GPT_OSS)), tmp_path_factory.mktemp)


def objective(logits: torch.Tensor) -> torch.Tensor:
    """A fixed random linear function of the logits (every logit gets a gradient)."""
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(5))
    return (logits * weights.to(logits.device)).sum()


def test_gradients_equal_transformers(gpt_oss):
    from transformers import AutoModelForCausalLM

    ids = sample_ids(VOCAB, seq=SEQ)
    hf = AutoModelForCausalLM.from_pretrained(gpt_oss, dtype=torch.float32).eval()
    objective(hf(ids).logits).backward()
    hf_grads = {n: p.grad for n, p in hf.named_parameters()}

    provider = AutoBridge.from_hf_pretrained(gpt_oss).to_megatron_provider(load_weights=True)
    provider.finalize()
    try:
        (model,) = provider.provide_distributed_model(wrap_with_ddp=False)
        model.eval()  # on a visible GPU (megatron-core's YaRN rotary runs there); compared on the CPU
        device = next(model.parameters()).device
        positions = torch.arange(SEQ, device=device).unsqueeze(0).expand(ids.shape[0], -1)
        logits = model(input_ids=ids.to(device), position_ids=positions, attention_mask=causal_mask(SEQ, device))
        objective(logits[..., :VOCAB]).backward()
        grads = {n: None if p.grad is None else p.grad.cpu() for n, p in model.named_parameters()}
    finally:
        destroy_model_parallel()

    experts = "decoder.layers.{}.mlp.experts.local_experts.{}."
    pairs = {
        "sinks": (
            grads["decoder.layers.0.self_attention.core_attention.softmax_offset"],
            hf_grads["model.layers.0.self_attn.sinks"],
        ),
        "router bias": (grads["decoder.layers.1.mlp.router.bias"], hf_grads["model.layers.1.mlp.router.bias"]),
        "fc2 bias": (
            grads[experts.format(0, 1) + "linear_fc2.bias"],
            hf_grads["model.layers.0.mlp.experts.down_proj_bias"][1],
        ),
        "fc1 bias": (
            grads[experts.format(1, 2) + "linear_fc1.bias"],
            deinterleave(hf_grads["model.layers.1.mlp.experts.gate_up_proj_bias"][2]),
        ),
        "fc1 weight": (
            grads[experts.format(0, 3) + "linear_fc1.weight"],
            deinterleave(hf_grads["model.layers.0.mlp.experts.gate_up_proj"][3].t()),
        ),
        "embedding": (grads["embedding.word_embeddings.weight"][:VOCAB], hf_grads["model.embed_tokens.weight"]),
    }
    # transformers' nn.Embedding(padding_idx=pad_token_id) gives the pad row no gradient; Megatron's does
    pad = GPT_OSS["pad_token_id"]
    assert pad in ids
    pairs["embedding"][0][pad] = pairs["embedding"][1][pad]
    for name, (ours, theirs) in pairs.items():
        scale = theirs.abs().max().item()
        assert scale > 0, name
        assert (ours - theirs).abs().max().item() <= 1e-4 * scale, name
