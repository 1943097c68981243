"""``ImportPlan`` of the tiny Llama toy, built and checked with no process group: the stock decoder's
mappings bound to the Megatron parameters of the toy's config, against the toy's real safetensors index."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from bridge_core.checkpoints.hf_checkpoint import HFCheckpoint  # noqa: E402
from bridge_core.checkpoints.safetensors_io import TensorMeta  # noqa: E402
from bridge_core.conversion.import_plan import ImportPlan  # noqa: E402
from bridge_core.conversion.params import ParamInfo  # noqa: E402
from bridge_core.conversion.tasks import build_tasks  # noqa: E402
from bridge_core.errors import CoverageError  # noqa: E402
from bridge_core.model.decoder import DecoderBridge  # noqa: E402
from bridge_core.testing.toy import ToyModel, build_toy  # noqa: E402
from bridge_core.testing.toys import TINY_LLAMA  # noqa: E402

C = TINY_LLAMA
H, F, V, D = C["hidden_size"], C["intermediate_size"], C["vocab_size"], C["hidden_size"] // C["num_attention_heads"]
QKV_ROWS = (C["num_attention_heads"] + 2 * C["num_key_value_heads"]) * D
O_PROJ = "model.layers.1.self_attn.o_proj.weight"


def megatron_params() -> list[ParamInfo]:
    """The toy's Megatron parameters (local layer spec, TP=1), written out from its config."""
    shapes: dict[str, tuple[tuple[int, ...], int | None]] = {
        "embedding.word_embeddings.weight": ((V, H), 0),
        "decoder.final_layernorm.weight": ((H,), None),
        "output_layer.weight": ((V, H), 0),
    }
    for i in range(C["num_hidden_layers"]):
        layer = f"decoder.layers.{i}."
        shapes |= {
            layer + "input_layernorm.weight": ((H,), None),
            layer + "self_attention.linear_qkv.weight": ((QKV_ROWS, H), 0),
            layer + "self_attention.linear_proj.weight": ((H, H), 1),
            layer + "pre_mlp_layernorm.weight": ((H,), None),
            layer + "mlp.linear_fc1.weight": ((2 * F, H), 0),
            layer + "mlp.linear_fc2.weight": ((H, F), 1),
        }
    return [
        ParamInfo(name, name, 0, shape, shape, torch.float32, dim, 1, False, torch.empty(shape, device="meta"))
        for name, (shape, dim) in shapes.items()
    ]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = build_toy(ToyModel("LlamaForCausalLM", C), tmp_path_factory.mktemp("toy") / "hf")
    return HFCheckpoint(folder)


@pytest.fixture(autouse=True)
def no_process_group(monkeypatch):
    """Planning must not touch torch.distributed: any call into it fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the import plan called torch.distributed")

    for name in ("is_initialized", "get_world_size", "get_rank", "all_gather_object", "new_group"):
        monkeypatch.setattr(torch.distributed, name, refuse)


def make_plan(toy, meta=None, hf_config=None, **settings) -> ImportPlan:
    bridge = DecoderBridge(toy.config)
    provider = bridge.provider_bridge(toy)
    tasks = build_tasks(megatron_params(), bridge.mapping_registry(), tied=False, owner="DecoderBridge")
    meta = toy.weights.meta if meta is None else meta
    return ImportPlan.build(tasks, meta, provider, hf_config or toy.config, owner="DecoderBridge", **settings)


def check(plan: ImportPlan) -> None:
    plan.check(plan.consumption())  # one rank: its consumption is everyone's


def test_the_toy_plan_passes_every_check(toy):
    plan = make_plan(toy)
    assert len(plan.params) == 3 + 6 * C["num_hidden_layers"]
    assert {key for _, key, _ in plan.consumption()} == set(toy.weights.meta)
    check(plan)


def test_a_missing_tensor(toy):
    meta = {k: v for k, v in toy.weights.meta.items() if k != "model.norm.weight"}
    with pytest.raises(CoverageError) as err:
        check(make_plan(toy, meta))
    assert str(err.value) == "the checkpoint lacks 1 tensor(s) the model needs: model.norm.weight"


def test_an_unused_tensor_unless_allowed(toy):
    extra = TensorMeta("model.safetensors", (H,), torch.float32)
    meta = {**toy.weights.meta, "model.rotary_emb.inv_freq": extra}
    with pytest.raises(CoverageError) as err:
        check(make_plan(toy, meta))
    assert str(err.value) == (
        "1 HF tensor(s) are not consumed by any mapping and would be dropped: model.rotary_emb.inv_freq "
        "(pass allow_unmapped=[...] to skip them deliberately)"
    )
    check(make_plan(toy, meta, allow_unused=["model.rotary_emb.inv_freq"]))


def test_a_shape_mismatch(toy):
    meta = dict(toy.weights.meta)
    meta[O_PROJ] = dataclasses.replace(meta[O_PROJ], shape=(H // 2, 2 * H))  # same element count
    with pytest.raises(CoverageError) as err:
        check(make_plan(toy, meta))
    assert str(err.value) == (
        "shape mismatch between checkpoint and model: decoder.layers.1.self_attention.linear_proj.weight expects "
        f"({H}, {H}), HF gives ({H // 2}, {2 * H}) from {{'{O_PROJ}': ({H // 2}, {2 * H})}}"
    )


def test_a_quantized_source_unless_the_bridge_dequantizes(toy):
    meta = dict(toy.weights.meta)
    meta[O_PROJ] = dataclasses.replace(meta[O_PROJ], dtype=torch.float8_e4m3fn)
    with pytest.raises(CoverageError) as err:
        check(make_plan(toy, meta))
    assert str(err.value) == (
        f"the checkpoint holds quantized weights ({O_PROJ} is torch.float8_e4m3fn; 1 quantized tensors, 0 scale "
        "tensors) and DecoderBridge does not dequantize: loading raw values would corrupt the model. Dequantize "
        "the checkpoint first, or use a bridge whose maybe_modify_loaded_hf_weight does "
        "(bridge_core.model.quantization.dequantize_fp8_blockwise)"
    )
    make_plan(toy, meta, dequantizes=True).check_quantization()


def test_quantization_is_checked_first_and_coverage_last(toy):
    meta = {k: v for k, v in toy.weights.meta.items() if k != "model.norm.weight"}
    meta[O_PROJ] = dataclasses.replace(meta[O_PROJ], shape=(H // 2, 2 * H), dtype=torch.float8_e4m3fn)
    with pytest.raises(CoverageError, match="quantized weights"):
        check(make_plan(toy, meta))
    meta[O_PROJ] = dataclasses.replace(meta[O_PROJ], dtype=torch.float32)
    with pytest.raises(CoverageError, match="shape mismatch"):
        check(make_plan(toy, meta))


def test_the_coverage_of_every_rank_is_checked_not_this_ranks_alone(toy):
    plan = make_plan(toy)
    mine = [c for c in plan.consumption() if c[1] != "lm_head.weight"]  # another rank reads the output layer
    with pytest.raises(CoverageError, match="not consumed by any mapping .*: lm_head.weight"):
        plan.check_coverage(mine)
    plan.check_coverage(mine + [("output_layer.weight", "lm_head.weight", None)])


def test_plans_of_the_same_inputs_are_equal_and_a_changed_one_differs(toy):
    plan = make_plan(toy)
    assert plan == make_plan(toy) and hash(plan) == hash(make_plan(toy))
    assert plan.diff(make_plan(toy)) == []
    meta = dict(toy.weights.meta)
    meta[O_PROJ] = dataclasses.replace(meta[O_PROJ], shape=(H // 2, 2 * H))
    changed = make_plan(toy, meta)
    assert changed != plan
    (line,) = plan.diff(changed)
    assert line.startswith(f"{O_PROJ}: ") and f"shape=({H}, {H})" in line and f"shape=({H // 2}, {2 * H})" in line
    allowed = make_plan(toy, allow_unused=["x"])
    assert allowed != plan and plan.diff(allowed) == ["allow_unused: frozenset() -> frozenset({'x'})"]
