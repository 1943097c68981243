"""The pure conversion plan: binding parameters to mappings, shape and coverage checks, quantized sources."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from bridge_core.checkpoints.safetensors_io import TensorMeta
from bridge_core.conversion import plan
from bridge_core.conversion.params import ParamInfo
from bridge_core.errors import CoverageError
from bridge_core.mappings import (
    AutoMapping,
    FusedExpertMapping,
    QKVMapping,
    ReplicatedMapping,
    RowParallelMapping,
    VocabParallelMapping,
)
from bridge_core.model.mapping_registry import MegatronMappingRegistry

EMB = "embedding.word_embeddings.weight"
OUT = "output_layer.weight"
QKV = "decoder.layers.0.self_attention.linear_qkv.weight"
PROJ = "decoder.layers.0.self_attention.linear_proj.weight"
NORM = "decoder.layers.0.input_layernorm.weight"
FINAL = "decoder.final_layernorm.weight"

# 4 heads, 2 KV groups, head dim 2, hidden 8; HF vocab 10 padded to 16.
CONFIG = SimpleNamespace(num_attention_heads=4, num_query_groups=2, kv_channels=2)
HF_CONFIG = SimpleNamespace(vocab_size=10)


def info(name, full_shape, tp_dim=None, tp_size=1, dtype=torch.float32) -> ParamInfo:
    shape = list(full_shape)
    if tp_dim is not None:
        shape[tp_dim] //= tp_size
    return ParamInfo(
        local_name=name,
        global_name=name,
        chunk=0,
        shape=tuple(shape),
        full_shape=tuple(full_shape),
        dtype=dtype,
        tp_dim=tp_dim,
        tp_size=tp_size,
        is_expert=".experts." in name,
        tensor=torch.empty(shape),
    )


def registry() -> MegatronMappingRegistry:
    return MegatronMappingRegistry(
        VocabParallelMapping(EMB, "model.embed_tokens.weight"),
        VocabParallelMapping(OUT, "lm_head.weight"),
        QKVMapping(
            "decoder.layers.*.self_attention.linear_qkv.weight",
            "model.layers.*.self_attn.q_proj.weight",
            "model.layers.*.self_attn.k_proj.weight",
            "model.layers.*.self_attn.v_proj.weight",
        ),
        RowParallelMapping(
            "decoder.layers.*.self_attention.linear_proj.weight", "model.layers.*.self_attn.o_proj.weight"
        ),
        AutoMapping("decoder.layers.*.input_layernorm.weight", "model.layers.*.input_layernorm.weight"),
        ReplicatedMapping(FINAL, "model.norm.weight"),
        FusedExpertMapping(
            "decoder.layers.*.mlp.experts.linear_fc2.weight*", "model.layers.*.mlp.experts.down_proj", transpose=True
        ),
    )


def dense_params(tp_size=1) -> list[ParamInfo]:
    return [
        info(EMB, (16, 8), 0, tp_size),
        info(QKV, (16, 8), 0, tp_size),
        info(PROJ, (8, 8), 1, tp_size),
        info(NORM, (8,)),
        info(FINAL, (8,)),
        info(OUT, (16, 8), 0, tp_size),
    ]


def meta(**overrides) -> dict[str, TensorMeta]:
    shapes = {
        "model.embed_tokens.weight": (10, 8),
        "lm_head.weight": (10, 8),
        "model.layers.0.self_attn.q_proj.weight": (8, 8),
        "model.layers.0.self_attn.k_proj.weight": (4, 8),
        "model.layers.0.self_attn.v_proj.weight": (4, 8),
        "model.layers.0.self_attn.o_proj.weight": (8, 8),
        "model.layers.0.input_layernorm.weight": (8,),
        "model.norm.weight": (8,),
    }
    shapes.update(overrides)
    return {k: TensorMeta("model.safetensors", shape, torch.float32) for k, shape in shapes.items()}


def tasks(params=None, tied=False, tp_size=1):
    return plan.build_tasks(params or dense_params(tp_size), registry(), tied=tied, owner="ToyBridge")


def by_name(task_list):
    return {t.param.global_name: t for t in task_list}


# -- build_tasks ----------------------------------------------------------------------------------
def test_build_tasks_binds_every_parameter():
    bound = by_name(tasks())
    assert bound[QKV].mapping.hf_param["k"] == "model.layers.0.self_attn.k_proj.weight"
    assert bound[OUT].mapping.hf_param == "lm_head.weight"
    assert not any(t.tied_copy for t in bound.values())


def test_unmapped_parameter_is_named_and_said_to_keep_random_init():
    params = [*dense_params(), info("decoder.layers.0.mystery.weight", (8,))]
    with pytest.raises(CoverageError) as err:
        tasks(params)
    msg = str(err.value)
    assert "decoder.layers.0.mystery.weight" in msg and "random initialisation" in msg and "ToyBridge" in msg
    assert msg.startswith("1 Megatron parameter(s)")


def test_tied_output_layer_reads_the_embedding_and_is_a_copy():
    bound = by_name(tasks(tied=True))
    out = bound[OUT]
    assert out.tied_copy and not bound[EMB].tied_copy
    assert out.mapping.hf_param == "model.embed_tokens.weight"
    assert isinstance(out.mapping, VocabParallelMapping)


def test_tied_output_layer_needs_no_output_mapping():
    reg = MegatronMappingRegistry(VocabParallelMapping(EMB, "model.embed_tokens.weight"))
    params = [info(EMB, (16, 8), 0), info(OUT, (16, 8), 0)]
    assert len(plan.build_tasks(params, reg, tied=True, owner="x")) == 2
    with pytest.raises(CoverageError, match=OUT):
        plan.build_tasks(params, reg, tied=False, owner="x")


def test_auto_mapping_takes_tp_dim_from_the_parameter():
    reg = MegatronMappingRegistry(AutoMapping("decoder.layers.*.w", "l.*.w"))
    params = [info("decoder.layers.0.w", (8, 4), 1, 2), info("decoder.layers.1.w", (8, 4), 0, 2)]
    bound = by_name(plan.build_tasks(params, reg, tied=False, owner="x"))
    assert bound["decoder.layers.0.w"].mapping.tp_dim == 1
    assert bound["decoder.layers.1.w"].mapping.tp_dim == 0
    assert reg.mappings[0].tp_dim is None  # the registry's own mapping is not rebound


def test_explicit_mapping_splitting_another_dim_is_an_error_under_tp():
    params = [info(PROJ, (8, 8), 0, 2)]
    with pytest.raises(CoverageError) as err:
        tasks(params, tp_size=2)
    msg = str(err.value)
    assert PROJ in msg and "RowParallelMapping splits dim 1" in msg and "split on dim 0" in msg


def test_explicit_mapping_dim_is_not_checked_without_tp():
    assert len(tasks([info(PROJ, (8, 8), 0, 1)])) == 1


def test_two_mappings_for_one_parameter_is_a_coverage_error():
    reg = MegatronMappingRegistry(ReplicatedMapping(FINAL, "a"), ReplicatedMapping(FINAL, "b"))
    with pytest.raises(CoverageError, match="owner-x: .*matched by several mappings"):
        plan.build_tasks([info(FINAL, (8,))], reg, tied=False, owner="owner-x")


def test_build_tasks_returns_tasks_in_natural_order():
    params = dense_params()
    random.Random(0).shuffle(params)
    assert [t.param.global_name for t in tasks(params)] == [EMB, NORM, PROJ, QKV, FINAL, OUT]


# -- natural_key ----------------------------------------------------------------------------------
def test_natural_key_orders_embedding_layers_numerically_final_norm_then_output():
    names = [
        OUT,
        FINAL,
        "decoder.layers.10.mlp.linear_fc1.weight",
        "decoder.layers.2.self_attention.linear_qkv.weight",
        EMB,
        "decoder.layers.2.mlp.linear_fc1.weight",
        "decoder.layers.1.mlp.experts.linear_fc1.weight10",
        "decoder.layers.1.mlp.experts.linear_fc1.weight9",
    ]
    assert sorted(names, key=plan.natural_key) == [
        EMB,
        "decoder.layers.1.mlp.experts.linear_fc1.weight9",
        "decoder.layers.1.mlp.experts.linear_fc1.weight10",
        "decoder.layers.2.mlp.linear_fc1.weight",
        "decoder.layers.2.self_attention.linear_qkv.weight",
        "decoder.layers.10.mlp.linear_fc1.weight",
        FINAL,
        OUT,
    ]


# -- check_import_shapes --------------------------------------------------------------------------
def test_import_shapes_accept_a_matching_checkpoint_with_padded_vocab():
    plan.check_import_shapes(tasks(), meta(), CONFIG, HF_CONFIG)


def test_import_shape_mismatch_names_param_expected_and_hf_shapes():
    with pytest.raises(CoverageError) as err:
        plan.check_import_shapes(tasks(), meta(**{"model.layers.0.self_attn.o_proj.weight": (8, 6)}), CONFIG, HF_CONFIG)
    msg = str(err.value)
    assert PROJ in msg and "expects (8, 8)" in msg and "HF gives (8, 6)" in msg
    assert "model.layers.0.self_attn.o_proj.weight" in msg


def test_import_shapes_report_a_transform_that_cannot_run():
    bad = meta(**{"model.layers.0.self_attn.k_proj.weight": (3, 8)})
    with pytest.raises(CoverageError, match=f"{QKV} cannot be built from"):
        plan.check_import_shapes(tasks(), bad, CONFIG, HF_CONFIG)


def test_import_shapes_list_every_mismatch_in_one_error():
    bad = meta(**{"model.norm.weight": (7,), "model.layers.0.input_layernorm.weight": (9,)})
    with pytest.raises(CoverageError) as err:
        plan.check_import_shapes(tasks(), bad, CONFIG, HF_CONFIG)
    assert FINAL in str(err.value) and NORM in str(err.value)


def expert_tasks(expert: int):
    name = f"decoder.layers.0.mlp.experts.linear_fc2.weight{expert}"
    return plan.build_tasks([info(name, (8, 16), 1, 1)], registry(), tied=False, owner="x")


def test_stacked_slice_shapes_are_checked_per_expert():
    stacked = {"model.layers.0.mlp.experts.down_proj": TensorMeta("f", (4, 16, 8), torch.float32)}
    plan.check_import_shapes(expert_tasks(3), stacked, CONFIG, HF_CONFIG)


def test_stacked_slice_index_out_of_range_is_an_error():
    stacked = {"model.layers.0.mlp.experts.down_proj": TensorMeta("f", (4, 16, 8), torch.float32)}
    with pytest.raises(CoverageError) as err:
        plan.check_import_shapes(expert_tasks(5), stacked, CONFIG, HF_CONFIG)
    msg = str(err.value)
    assert "no slice 5" in msg and "decoder.layers.0.mlp.experts.linear_fc2.weight5" in msg and "(4, 16, 8)" in msg


def test_import_shapes_leave_missing_tensors_to_the_coverage_check():
    partial = meta(**{"model.layers.0.self_attn.o_proj.weight": (8, 6)})
    del partial["model.norm.weight"]
    with pytest.raises(CoverageError) as err:
        plan.check_import_shapes(tasks(), partial, CONFIG, HF_CONFIG)
    assert PROJ in str(err.value) and FINAL not in str(err.value)


# -- consumption and coverage ---------------------------------------------------------------------
def test_consumption_lists_every_hf_read_and_skips_tied_copies():
    consumed = plan.consumption(tasks(tied=True))
    assert (QKV, "model.layers.0.self_attn.v_proj.weight", None) in consumed
    assert [c for c in consumed if c[1] == "model.embed_tokens.weight"] == [(EMB, "model.embed_tokens.weight", None)]
    assert all(c[0] != OUT for c in consumed)


def test_consumption_carries_the_stacked_slice_index():
    assert plan.consumption(expert_tasks(2)) == [
        ("decoder.layers.0.mlp.experts.linear_fc2.weight2", "model.layers.0.mlp.experts.down_proj", 2)
    ]


def test_coverage_passes_when_every_tensor_is_used_once():
    plan.check_import_coverage(plan.consumption(tasks()), meta())


def test_coverage_names_a_missing_tensor():
    partial = meta()
    del partial["model.norm.weight"]
    with pytest.raises(CoverageError, match=r"lacks 1 tensor\(s\) the model needs: model\.norm\.weight"):
        plan.check_import_coverage(plan.consumption(tasks()), partial)


def test_coverage_names_an_unused_tensor_unless_allowed():
    extra = meta(**{"model.rotary_emb.inv_freq": (4,)})
    consumed = plan.consumption(tasks())
    with pytest.raises(CoverageError) as err:
        plan.check_import_coverage(consumed, extra)
    assert "model.rotary_emb.inv_freq" in str(err.value) and "allow_unmapped" in str(err.value)
    plan.check_import_coverage(consumed, extra, allow_unused=["model.rotary_emb.inv_freq"])


def test_coverage_refuses_one_tensor_feeding_two_parameters():
    consumed = [("decoder.layers.0.a.weight", "k", None), ("decoder.layers.0.b.weight", "k", None)]
    with pytest.raises(CoverageError, match="k -> decoder.layers.0.a.weight and decoder.layers.0.b.weight"):
        plan.check_import_coverage(consumed, {"k": TensorMeta("f", (2,), torch.float32)})


def test_coverage_treats_tp_and_dp_peers_as_one_reader():
    per_rank = plan.consumption(tasks(tp_size=2))
    plan.check_import_coverage(per_rank * 4, meta())


def test_coverage_refuses_a_partly_consumed_stacked_tensor():
    key = "model.layers.0.mlp.experts.down_proj"
    stacked = {key: TensorMeta("f", (4, 16, 8), torch.float32)}
    consumed = [(f"decoder.layers.0.mlp.experts.linear_fc2.weight{e}", key, e) for e in (0, 1)]
    with pytest.raises(CoverageError, match=r"only partly consumed: .*down_proj \(2 of 4 slices\)"):
        plan.check_import_coverage(consumed, stacked)
    full = [(f"decoder.layers.0.mlp.experts.linear_fc2.weight{e}", key, e) for e in range(4)]
    plan.check_import_coverage(full, stacked)


def test_quantization_companions_are_allowed_only_with_companions_ok():
    consumed = plan.consumption(tasks())
    scaled = meta(**{"model.layers.0.self_attn.o_proj.weight_scale_inv": (1, 1)})
    with pytest.raises(CoverageError, match="o_proj.weight_scale_inv"):
        plan.check_import_coverage(consumed, scaled)
    plan.check_import_coverage(consumed, scaled, companions_ok=True)


def test_companions_ok_does_not_hide_other_unused_tensors():
    extra = meta(**{"model.extra.weight": (2,), "model.layers.0.self_attn.o_proj.weight_scale_inv": (1, 1)})
    with pytest.raises(CoverageError) as err:
        plan.check_import_coverage(plan.consumption(tasks()), extra, companions_ok=True)
    assert "model.extra.weight" in str(err.value) and "scale_inv" not in str(err.value)


# -- check_quantization ---------------------------------------------------------------------------
def test_float8_weights_are_refused_naming_the_tensor():
    fp8 = {"w": TensorMeta("f", (2, 2), torch.float8_e4m3fn), "n": TensorMeta("f", (2,), torch.bfloat16)}
    with pytest.raises(CoverageError) as err:
        plan.check_quantization(fp8, SimpleNamespace(), dequantizes=False, owner="ToyBridge")
    msg = str(err.value)
    assert "w is torch.float8_e4m3fn" in msg and "1 quantized tensors" in msg and "ToyBridge does not dequantize" in msg


def test_scale_inv_tensors_are_refused():
    scales = {"w": TensorMeta("f", (2, 2), torch.bfloat16), "w_scale_inv": TensorMeta("f", (1,), torch.float32)}
    with pytest.raises(CoverageError, match="w_scale_inv is a quantization scale"):
        plan.check_quantization(scales, SimpleNamespace(), dequantizes=False, owner="x")


def test_quantization_config_is_refused():
    plain = {"w": TensorMeta("f", (2, 2), torch.bfloat16)}
    hf_config = SimpleNamespace(quantization_config={"quant_method": "fp8"})
    with pytest.raises(CoverageError, match="config.json has quantization_config"):
        plan.check_quantization(plain, hf_config, dequantizes=False, owner="x")


def test_unknown_safetensors_dtype_counts_as_quantized():
    with pytest.raises(CoverageError, match="w is F4"):
        plan.check_quantization({"w": TensorMeta("f", (2,), "F4")}, SimpleNamespace(), dequantizes=False, owner="x")


def test_quantized_sources_pass_when_the_bridge_dequantizes():
    quantized = {"w": TensorMeta("f", (2, 2), torch.float8_e4m3fn), "w_scale_inv": TensorMeta("f", (1,), torch.float32)}
    plan.check_quantization(quantized, SimpleNamespace(quantization_config={}), dequantizes=True, owner="x")


def test_plain_checkpoints_pass_the_quantization_check():
    plan.check_quantization(meta(), SimpleNamespace(quantization_config=None), dequantizes=False, owner="x")


# -- export_parts ---------------------------------------------------------------------------------
def test_export_parts_split_qkv_into_hf_shapes():
    qkv = by_name(tasks())[QKV]
    assert plan.export_parts(qkv, CONFIG, HF_CONFIG, None) == [
        ("model.layers.0.self_attn.q_proj.weight", None, (8, 8), torch.float32),
        ("model.layers.0.self_attn.k_proj.weight", None, (4, 8), torch.float32),
        ("model.layers.0.self_attn.v_proj.weight", None, (4, 8), torch.float32),
    ]


def test_export_parts_trim_vocab_and_apply_the_requested_dtype():
    emb = by_name(tasks())[EMB]
    assert plan.export_parts(emb, CONFIG, HF_CONFIG, torch.bfloat16) == [
        ("model.embed_tokens.weight", None, (10, 8), torch.bfloat16)
    ]


def test_export_parts_keep_a_mapping_s_pinned_hf_dtype():
    """A mapping with ``hf_dtype`` (an fp32 router in a bf16 checkpoint) is exported in it, whatever the export's."""
    emb = by_name(tasks())[EMB]
    emb.mapping.hf_dtype = torch.float32
    assert plan.export_parts(emb, CONFIG, HF_CONFIG, torch.bfloat16) == [
        ("model.embed_tokens.weight", None, (10, 8), torch.float32)
    ]


def test_export_parts_of_a_stacked_expert_give_the_transposed_slice_and_index():
    (task,) = expert_tasks(3)
    assert plan.export_parts(task, CONFIG, HF_CONFIG, None) == [
        ("model.layers.0.mlp.experts.down_proj", 3, (16, 8), torch.float32)
    ]


def test_a_shared_duplicate_of_the_embedding_is_a_tied_copy():
    """megatron-core's MTP stage of a pipeline holds a duplicate embedding (``shared=True``): loaded from the
    same HF tensor, not consumed twice, not exported twice; the first stage's embedding is the real one."""
    first, duplicate = info(EMB, (16, 8), tp_dim=0), info(EMB, (16, 8), tp_dim=0)
    duplicate.tensor.shared = True
    (real,) = plan.build_tasks([first], registry(), tied=False, owner="x")
    (copy,) = plan.build_tasks([duplicate], registry(), tied=False, owner="x")
    assert not real.tied_copy and copy.tied_copy
    assert copy.hf_keys == ("model.embed_tokens.weight",) and plan.consumption([copy]) == []
