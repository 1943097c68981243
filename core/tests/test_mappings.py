"""Mapping format transforms, tensor-parallel sharding rules, name matching and the mapping registry."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bridge_core.mappings import (
    AutoMapping,
    ColumnParallelMapping,
    FusedExpertMapping,
    FusedGatedExpertMapping,
    GatedMLPMapping,
    MappingContext,
    QKVMapping,
    ReplicatedMapping,
    RowParallelMapping,
    VocabParallelMapping,
)
from bridge_core.mappings.fused import merge_gated, merge_qkv, split_gated, split_qkv
from bridge_core.model.mapping_registry import MegatronMappingRegistry

Q, K, V = 1, 2, 3
HEAD_DIM = 2
# (num_heads, num_groups): GQA, MHA, MQA
ATTENTION = [(6, 3), (4, 4), (4, 1)]


def projection(kind: int, heads: int, cols: int | None) -> torch.Tensor:
    """Rows valued kind*1000 + head*10 + row (+ col/100 for weights), so every row says where it came from."""
    codes = torch.tensor([kind * 1000 + h * 10 + r for h in range(heads) for r in range(HEAD_DIM)], dtype=torch.float64)
    if cols is None:
        return codes
    return codes[:, None] + torch.arange(cols, dtype=torch.float64)[None, :] / 100


def grouped_layout(q, k, v, heads: int, groups: int) -> torch.Tensor:
    """Megatron's order written out by hand: per KV group its q heads, then its k head, then its v head."""
    per = heads // groups
    rows = []
    for g in range(groups):
        rows += [q[(g * per + j) * HEAD_DIM + r] for j in range(per) for r in range(HEAD_DIM)]
        rows += [k[g * HEAD_DIM + r] for r in range(HEAD_DIM)]
        rows += [v[g * HEAD_DIM + r] for r in range(HEAD_DIM)]
    return torch.stack(rows)


# -- QKV ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("heads,groups", ATTENTION)
@pytest.mark.parametrize("cols", [3, None], ids=["weight", "bias"])
def test_merge_qkv_uses_megatron_grouped_layout(heads, groups, cols):
    q, k, v = projection(Q, heads, cols), projection(K, groups, cols), projection(V, groups, cols)
    merged = merge_qkv(q, k, v, heads, groups, HEAD_DIM)
    assert torch.equal(merged, grouped_layout(q, k, v, heads, groups))


@pytest.mark.parametrize("heads,groups", ATTENTION)
@pytest.mark.parametrize("cols", [3, None], ids=["weight", "bias"])
def test_split_qkv_inverts_merge_qkv(heads, groups, cols):
    q, k, v = projection(Q, heads, cols), projection(K, groups, cols), projection(V, groups, cols)
    q2, k2, v2 = split_qkv(merge_qkv(q, k, v, heads, groups, HEAD_DIM), heads, groups, HEAD_DIM)
    assert torch.equal(q2, q) and torch.equal(k2, k) and torch.equal(v2, v)


def test_split_qkv_reads_megatron_layout_back_to_hf():
    heads, groups = 6, 3
    q, k, v = projection(Q, heads, 3), projection(K, groups, 3), projection(V, groups, 3)
    q2, k2, v2 = split_qkv(grouped_layout(q, k, v, heads, groups), heads, groups, HEAD_DIM)
    assert torch.equal(q2, q) and torch.equal(k2, k) and torch.equal(v2, v)


def test_qkv_mapping_reads_dims_from_config_and_roundtrips():
    mapping = QKVMapping("qkv", "q_proj", "k_proj", "v_proj")
    config = SimpleNamespace(num_attention_heads=6, num_query_groups=3, kv_channels=HEAD_DIM)
    ctx = MappingContext(config, None, (20, 3))
    hf = {"q": projection(Q, 6, 3), "k": projection(K, 3, 3), "v": projection(V, 3, 3)}
    full = mapping.hf_to_megatron(hf, ctx)
    assert torch.equal(full, grouped_layout(hf["q"], hf["k"], hf["v"], 6, 3))
    out = mapping.megatron_to_hf(full, ctx)
    assert list(out) == ["q_proj", "k_proj", "v_proj"]
    assert all(torch.equal(out[f"{r}_proj"], hf[r]) for r in "qkv")


def test_qkv_mapping_treats_missing_query_groups_as_mha():
    config = SimpleNamespace(num_attention_heads=4, num_query_groups=None, kv_channels=HEAD_DIM)
    hf = {"q": projection(Q, 4, 2), "k": projection(K, 4, 2), "v": projection(V, 4, 2)}
    full = QKVMapping("qkv", "q", "k", "v").hf_to_megatron(hf, MappingContext(config, None, (24, 2)))
    assert torch.equal(full, grouped_layout(hf["q"], hf["k"], hf["v"], 4, 4))


# -- gated MLP ------------------------------------------------------------------------------------
def gate_up(rows_per_half: int = 8, cols: int = 3) -> torch.Tensor:
    gate = torch.arange(rows_per_half, dtype=torch.float32)[:, None].expand(-1, cols)
    return torch.cat([gate, gate + 100])


@pytest.mark.parametrize("n", [1, 2, 4])
def test_split_gated_gives_each_rank_its_gate_then_up_rows(n):
    shards = split_gated(gate_up(), n)
    rows = 8 // n
    assert len(shards) == n
    for i, shard in enumerate(shards):
        expected = torch.cat([torch.arange(i * rows, (i + 1) * rows), torch.arange(i * rows, (i + 1) * rows) + 100])
        assert torch.equal(shard[:, 0], expected.float())


@pytest.mark.parametrize("n", [1, 2, 4])
def test_merge_gated_inverts_split_gated(n):
    full = gate_up()
    assert torch.equal(merge_gated(split_gated(full, n)), full)


def test_gated_mlp_mapping_concatenates_gate_then_up():
    mapping = GatedMLPMapping("fc1", "gate_proj", "up_proj")
    gate, up = torch.zeros(4, 3), torch.ones(4, 3)
    full = mapping.hf_to_megatron({"gate": gate, "up": up}, MappingContext(None, None, (8, 3)))
    assert torch.equal(full, torch.cat([gate, up]))
    out = mapping.megatron_to_hf(full, MappingContext(None, None, (8, 3)))
    assert torch.equal(out["gate_proj"], gate) and torch.equal(out["up_proj"], up)
    assert torch.equal(mapping.split(full, 2)[1], torch.cat([gate[2:], up[2:]]))


# -- single-tensor sharding -----------------------------------------------------------------------
FULL = torch.arange(24.0).reshape(4, 6)


def test_column_parallel_splits_rows():
    shards = ColumnParallelMapping("a", "b").split(FULL, 2)
    assert [tuple(s.shape) for s in shards] == [(2, 6), (2, 6)]
    assert torch.equal(shards[1], FULL[2:])
    assert torch.equal(ColumnParallelMapping("a", "b").merge(shards), FULL)


def test_row_parallel_splits_columns():
    shards = RowParallelMapping("a", "b").split(FULL, 3)
    assert [tuple(s.shape) for s in shards] == [(4, 2)] * 3
    assert torch.equal(shards[2], FULL[:, 4:])
    assert torch.equal(RowParallelMapping("a", "b").merge(shards), FULL)


def test_replicated_gives_every_rank_the_full_tensor():
    mapping = ReplicatedMapping("a", "b")
    shards = mapping.split(FULL, 4)
    assert len(shards) == 4 and all(torch.equal(s, FULL) for s in shards)
    assert torch.equal(mapping.merge(shards), FULL)


@pytest.mark.parametrize("cls", [ColumnParallelMapping, RowParallelMapping, ReplicatedMapping])
def test_single_rank_split_is_the_full_tensor(cls):
    shards = cls("a", "b").split(FULL, 1)
    assert len(shards) == 1 and torch.equal(shards[0], FULL)


def test_single_tensor_default_transforms_are_identity():
    mapping = ColumnParallelMapping("a", "hf.a")
    ctx = MappingContext(None, None, (4, 6))
    assert mapping.hf_to_megatron(FULL, ctx) is FULL
    assert mapping.megatron_to_hf(FULL, ctx) == {"hf.a": FULL}


# -- vocabulary -----------------------------------------------------------------------------------
def test_vocab_mapping_pads_zero_rows_on_import():
    hf = torch.ones(5, 3)
    ctx = MappingContext(None, SimpleNamespace(vocab_size=5), (8, 3))
    full = VocabParallelMapping("emb", "hf.emb").hf_to_megatron(hf, ctx)
    assert tuple(full.shape) == (8, 3)
    assert torch.equal(full[:5], hf) and not full[5:].any()


def test_vocab_mapping_trims_padding_on_export():
    full = torch.arange(24.0).reshape(8, 3)
    ctx = MappingContext(None, SimpleNamespace(vocab_size=5), (8, 3))
    out = VocabParallelMapping("emb", "hf.emb").megatron_to_hf(full, ctx)
    assert list(out) == ["hf.emb"] and torch.equal(out["hf.emb"], full[:5])


def test_vocab_mapping_refuses_more_hf_rows_than_megatron_has():
    ctx = MappingContext(None, SimpleNamespace(vocab_size=9), (8, 3))
    with pytest.raises(ValueError, match="9 rows down to 8"):
        VocabParallelMapping("emb", "hf.emb").hf_to_megatron(torch.ones(9, 3), ctx)


def test_vocab_mapping_splits_rows():
    assert VocabParallelMapping("emb", "hf").tp_dim == 0


# -- stacked experts ------------------------------------------------------------------------------
def test_fused_expert_without_transpose_is_identity():
    mapping = FusedExpertMapping("fc2.weight*", "down_proj")
    w = torch.arange(6.0).reshape(2, 3)
    assert torch.equal(mapping.hf_to_megatron(w, MappingContext(None, None, (2, 3))), w)
    assert torch.equal(mapping.megatron_to_hf(w, MappingContext(None, None, (2, 3)))["down_proj"], w)
    assert mapping.tp_dim == 1 and mapping.stacked


def test_fused_expert_transpose_converts_in_out_to_out_in():
    mapping = FusedExpertMapping("fc2.weight*", "down_proj", transpose=True)
    hf = torch.arange(6.0).reshape(2, 3)  # [in, out]
    full = mapping.hf_to_megatron(hf, MappingContext(None, None, (3, 2)))
    assert torch.equal(full, hf.T) and full.is_contiguous()
    assert torch.equal(mapping.megatron_to_hf(full, MappingContext(None, None, (3, 2)))["down_proj"], hf)


def test_fused_expert_splits_on_its_tp_dim():
    shards = FusedExpertMapping("fc2.weight*", "down_proj").split(FULL, 2)
    assert torch.equal(shards[0], FULL[:, :3])
    shards = FusedExpertMapping("fc2.weight*", "down_proj", tp_dim=0).split(FULL, 2)
    assert torch.equal(shards[0], FULL[:2])


def test_fused_gated_expert_splits_gate_and_up_per_rank():
    mapping = FusedGatedExpertMapping("fc1.weight*", "gate_up_proj")
    full = gate_up()
    shards = mapping.split(full, 2)
    assert torch.equal(shards[1][:, 0], torch.tensor([4.0, 5, 6, 7, 104, 105, 106, 107]))
    assert torch.equal(mapping.merge(shards), full)
    assert mapping.tp_dim == 0


def test_fused_gated_expert_transpose_keeps_gate_rows_first():
    mapping = FusedGatedExpertMapping("fc1.weight*", "gate_up_proj", transpose=True)
    hf = gate_up().T.contiguous()  # [hidden, 2 * ffn]
    full = mapping.hf_to_megatron(hf, MappingContext(None, None, (16, 3)))
    assert torch.equal(full, gate_up())
    assert torch.equal(mapping.megatron_to_hf(full, MappingContext(None, None, (16, 3)))["gate_up_proj"], hf)


# -- name matching --------------------------------------------------------------------------------
def test_match_binds_layer_index_on_both_sides():
    mapping = RowParallelMapping("decoder.layers.*.mlp.linear_fc2.weight", "model.layers.*.mlp.down_proj.weight")
    bound = mapping.match("decoder.layers.12.mlp.linear_fc2.weight")
    assert bound.megatron_param == "decoder.layers.12.mlp.linear_fc2.weight"
    assert bound.hf_param == "model.layers.12.mlp.down_proj.weight"
    assert bound.index is None
    assert mapping.hf_param == "model.layers.*.mlp.down_proj.weight"  # the pattern itself is untouched


@pytest.mark.parametrize(
    "name",
    [
        "decoder.layers.x.mlp.linear_fc2.weight",
        "decoder.layers.1.mlp.linear_fc2.weight_extra",
        "prefix.decoder.layers.1.mlp.linear_fc2.weight",
        "decoder.layers..mlp.linear_fc2.weight",
    ],
)
def test_match_refuses_other_names(name):
    mapping = RowParallelMapping("decoder.layers.*.mlp.linear_fc2.weight", "model.layers.*.mlp.down_proj.weight")
    assert mapping.match(name) is None


def test_match_fills_every_hf_role():
    mapping = QKVMapping("decoder.layers.*.qkv", "m.*.q", "m.*.k", "m.*.v")
    bound = mapping.match("decoder.layers.3.qkv")
    assert bound.hf_param == {"q": "m.3.q", "k": "m.3.k", "v": "m.3.v"}
    assert bound.hf_names == ("m.3.q", "m.3.k", "m.3.v")


def test_match_with_extra_megatron_wildcard_sets_index():
    mapping = FusedExpertMapping("decoder.layers.*.mlp.experts.linear_fc2.weight*", "model.layers.*.experts.down_proj")
    bound = mapping.match("decoder.layers.3.mlp.experts.linear_fc2.weight7")
    assert bound.hf_param == "model.layers.3.experts.down_proj"
    assert bound.index == 7
    assert mapping.index is None


def test_wildcard_glued_to_a_word_needs_digits():
    mapping = FusedGatedExpertMapping("decoder.layers.*.mlp.experts.linear_fc1.weight*", "model.layers.*.gate_up")
    assert mapping.match("decoder.layers.0.mlp.experts.linear_fc1.weight3").index == 3
    assert mapping.match("decoder.layers.0.mlp.experts.linear_fc1.weight") is None
    assert mapping.match("decoder.layers.0.mlp.experts.linear_fc1.weightx") is None


def test_match_per_expert_names_fill_both_wildcards():
    mapping = GatedMLPMapping(
        "decoder.layers.*.mlp.experts.local_experts.*.linear_fc1.weight",
        "model.layers.*.mlp.experts.*.gate_proj.weight",
        "model.layers.*.mlp.experts.*.up_proj.weight",
    )
    bound = mapping.match("decoder.layers.2.mlp.experts.local_experts.5.linear_fc1.weight")
    assert bound.hf_names == (
        "model.layers.2.mlp.experts.5.gate_proj.weight",
        "model.layers.2.mlp.experts.5.up_proj.weight",
    )
    assert bound.index is None


# -- registry -------------------------------------------------------------------------------------
def registry() -> MegatronMappingRegistry:
    return MegatronMappingRegistry(
        VocabParallelMapping("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
        QKVMapping("decoder.layers.*.self_attention.linear_qkv.weight", "l.*.q", "l.*.k", "l.*.v"),
        AutoMapping("decoder.layers.*.input_layernorm.weight", "l.*.input_layernorm.weight"),
    )


def test_registry_resolves_megatron_names_to_bound_mappings():
    bound = registry().megatron_to_hf_lookup("decoder.layers.4.self_attention.linear_qkv.weight")
    assert isinstance(bound, QKVMapping)
    assert bound.hf_param == {"q": "l.4.q", "k": "l.4.k", "v": "l.4.v"}


def test_registry_resolves_hf_names_to_their_mappings():
    reg = registry()
    found = reg.hf_to_megatron_lookup("l.4.k")
    assert len(found) == 1 and isinstance(found[0], QKVMapping)
    assert reg.hf_to_megatron_lookup("model.embed_tokens.weight")[0].megatron_param == (
        "embedding.word_embeddings.weight"
    )


def test_registry_returns_nothing_for_unknown_names():
    reg = registry()
    assert reg.megatron_to_hf_lookup("decoder.layers.0.mystery.weight") is None
    assert reg.hf_to_megatron_lookup("l.0.mystery") == []


def test_registry_refuses_two_mappings_for_one_name():
    reg = MegatronMappingRegistry(
        ReplicatedMapping("decoder.layers.*.norm.weight", "a.*"),
        ReplicatedMapping("decoder.layers.1.norm.weight", "b"),
    )
    assert reg.megatron_to_hf_lookup("decoder.layers.0.norm.weight").hf_param == "a.0"
    with pytest.raises(ValueError, match=r"decoder\.layers\.1\.norm\.weight is matched by several"):
        reg.megatron_to_hf_lookup("decoder.layers.1.norm.weight")


def test_registry_refuses_non_mappings():
    with pytest.raises(TypeError, match="takes mappings"):
        MegatronMappingRegistry(ReplicatedMapping("a", "b"), ("a", "b"))


def test_registry_is_a_sized_iterable_of_its_mappings():
    reg = registry()  # the norm is followed by its Transformer Engine spelling (test_te_spellings.py)
    assert len(reg) == 4
    assert [type(m) for m in reg] == [VocabParallelMapping, QKVMapping, AutoMapping, AutoMapping]
    assert reg.mappings[3].megatron_param == "decoder.layers.*.self_attention.linear_qkv.layer_norm_weight"
