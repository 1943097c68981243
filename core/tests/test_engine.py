"""The conversion engine end to end on CPU, through the public API, with an in-process test plugin.

transformers' own forward pass and saved tensors are the reference: roundtrips are bit-exact
(names, dtypes, values) and fp32 logits match within 1e-4.
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import _test_bridges
import pytest
import torch
from safetensors.torch import load_file, save_file

from bridge_core import AutoBridge
from bridge_core.checkpoints.safetensors_io import SafetensorsCheckpoint
from bridge_core.conversion import row_reader
from bridge_core.errors import CheckpointError, ConfigError, CoverageError
from bridge_core.plugins.discovery import reset_registry
from bridge_core.plugins.registry import Registry
from bridge_core.runtime.inference import forward_logits
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.compare import compare_hf_weights, max_abs_diff
from bridge_core.testing.launch import run_cases
from bridge_core.testing.toy import ToyModel, build_toy, hf_logits, sample_ids

HERE = Path(__file__).parent
UNDER_LAUNCHER = "WORLD_SIZE" in os.environ  # read at collection, before any test starts a group
LLAMA = {
    "model_type": "llama",
    "hidden_size": 96,
    "num_attention_heads": 6,
    "num_key_value_heads": 3,
    "num_hidden_layers": 2,
    "intermediate_size": 160,
    "vocab_size": 1000,
    "max_position_embeddings": 256,
}
MOE = {
    "model_type": "qwen3_moe",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 24,
    "num_hidden_layers": 2,
    "intermediate_size": 96,
    "moe_intermediate_size": 40,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "norm_topk_prob": True,
    "vocab_size": 515,
    "max_position_embeddings": 256,
}


@pytest.fixture(autouse=True)
def test_plugin():
    registry = Registry()
    registry.add_plugin(_test_bridges, name="test-bridges", strict=True)
    reset_registry(registry)
    yield
    destroy_model_parallel()
    reset_registry()


def toy(tmp_path_factory, name: str, config: dict, dtype: str = "float32") -> Path:
    return build_toy(ToyModel(config.get("architecture", ""), config, dtype=dtype), tmp_path_factory.mktemp(name))


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    folder = build_toy(ToyModel("LlamaForCausalLM", LLAMA), tmp_path_factory.mktemp("llama"))
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    return folder


@pytest.fixture(scope="module")
def llama_tied_bf16(tmp_path_factory) -> Path:
    cfg = {**LLAMA, "tie_word_embeddings": True, "vocab_size": 999}
    return build_toy(ToyModel("LlamaForCausalLM", cfg, dtype="bfloat16"), tmp_path_factory.mktemp("tied"))


def convert(path: Path, load_weights: bool = False, **provider_settings):
    bridge = AutoBridge.from_hf_pretrained(path)
    provider = bridge.to_megatron_provider(load_weights=load_weights)
    for key, value in provider_settings.items():
        setattr(provider, key, value)
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    if not load_weights:
        bridge.load_hf_weights(model)
    return bridge, model


def copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_seed_smoke_test_runs_unchanged(llama, capsys):
    bridge = AutoBridge.from_hf_pretrained(str(llama))
    provider = bridge.to_megatron_provider()
    provider.tensor_model_parallel_size = 1
    provider.pipeline_model_parallel_size = 1
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    bridge.load_hf_weights(model)
    for i, (name, tensor) in enumerate(bridge.export_hf_weights(model, cpu=True)):  # noqa: B007 (seed's code)
        print(name, tuple(tensor.shape))
    lines = capsys.readouterr().out.splitlines()
    original = load_file(llama / "model.safetensors")
    assert sorted(line.split()[0] for line in lines) == sorted(original)
    assert lines[0].startswith("model.embed_tokens.weight (1000, 96)")


@pytest.mark.skipif(UNDER_LAUNCHER, reason="runs under a launcher")
def test_one_process_group_leaves_the_environment_alone(llama):
    """A subprocess started later (e.g. ``bridgectl``) must not believe it runs under torchrun."""
    import torch.distributed as dist

    from bridge_core.runtime.parallel import ensure_process_group

    ensure_process_group()
    assert dist.is_initialized() and dist.get_world_size() == 1
    assert not {"WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT"} & set(os.environ)


def test_fp32_roundtrip_is_bit_exact_and_logits_match_transformers(llama, tmp_path):
    bridge, model = convert(llama)
    ids = sample_ids(1000, seq=64)
    diff = max_abs_diff(forward_logits(model, ids, vocab_size=1000), hf_logits(llama, ids))
    assert diff <= 1e-4
    bridge.save_hf_pretrained(model, tmp_path / "out")
    assert compare_hf_weights(llama, tmp_path / "out") == []


def test_bf16_tied_roundtrip_keeps_dtypes_and_trims_padding(llama_tied_bf16, tmp_path):
    bridge, model = convert(llama_tied_bf16)
    assert model[0].embedding.word_embeddings.weight.shape[0] == 1024  # padded vocabulary
    exported = dict(bridge.export_hf_weights(model))
    assert "lm_head.weight" not in exported and exported["model.embed_tokens.weight"].shape[0] == 999
    assert {t.dtype for t in exported.values()} == {torch.bfloat16}
    bridge.save_hf_pretrained(model, tmp_path / "out")
    assert compare_hf_weights(llama_tied_bf16, tmp_path / "out") == []


def test_direct_reads_fill_parameters_as_the_general_path_does(llama, monkeypatch):
    bridge, model = convert(llama)
    model[0].cpu()  # what this tests: direct reads fill host parameters (GPU ones: the test below)
    direct = [p.detach().clone() for p in model[0].parameters()]
    with torch.no_grad():
        for p in model[0].parameters():
            p.fill_(3.0)
    monkeypatch.delattr(SafetensorsCheckpoint, "read_rows_into")
    report = bridge.load_hf_weights(model)
    assert report.direct == 0 and report.tensors == len(direct)
    assert all(torch.equal(a, b) for a, b in zip(direct, model[0].parameters()))
    monkeypatch.undo()
    assert bridge.load_hf_weights(model).direct == len(direct)  # fp32 checkpoint into an fp32 model: every one


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_direct_reads_into_gpu_parameters_through_pinned_buffers_match_the_general_path(llama, monkeypatch):
    bridge, model = convert(llama)
    model[0].cuda()
    monkeypatch.setattr(row_reader, "CHUNK_BYTES", 4096)  # many chunks per tensor, buffers reused
    monkeypatch.delattr(SafetensorsCheckpoint, "read_rows_into")
    assert bridge.load_hf_weights(model).direct == 0
    general = [p.detach().clone() for p in model[0].parameters()]
    with torch.no_grad():
        for p in model[0].parameters():
            p.fill_(3.0)
    monkeypatch.undo()
    report = bridge.load_hf_weights(model)
    assert report.direct == report.tensors == len(general)
    assert all(torch.equal(a, b) for a, b in zip(general, model[0].parameters()))


def test_load_weights_at_build_skips_random_init(llama):
    bridge, model = convert(llama, load_weights=True)
    assert model[0].config.perform_initialization is False
    original = load_file(llama / "model.safetensors")
    assert all(torch.equal(original[n], t) for n, t in bridge.export_hf_weights(model))


def test_requested_dtype_is_used_and_exported(llama, tmp_path):
    bridge = AutoBridge.from_hf_pretrained(llama, torch_dtype="bfloat16")
    provider = bridge.to_megatron_provider()
    model = provider.provide_distributed_model()
    bridge.load_hf_weights(model)
    assert model[0].decoder.layers[0].mlp.linear_fc1.weight.dtype == torch.bfloat16
    name, tensor = next(iter(bridge.export_hf_weights(model, dtype="float32")))
    assert tensor.dtype == torch.float32


def test_export_is_a_generator_in_model_order(llama):
    bridge, model = convert(llama)
    stream = bridge.export_hf_weights(model)
    assert isinstance(stream, types.GeneratorType)
    names = [n for n, _ in stream]
    assert names[0] == "model.embed_tokens.weight" and names[-1] == "lm_head.weight"
    assert names.index("model.layers.1.input_layernorm.weight") > names.index("model.layers.0.mlp.down_proj.weight")


def test_saved_folder_has_regenerated_config_and_side_files(llama, tmp_path):
    bridge, model = convert(llama)
    out = bridge.save_hf_pretrained(model, tmp_path / "out", max_shard_size="100KB")
    files = sorted(p.name for p in out.iterdir())
    assert "tokenizer.json" in files and "generation_config.json" in files
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    saved, source = json.loads((out / "config.json").read_text()), json.loads((llama / "config.json").read_text())
    for key in ("hidden_size", "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_parameters", "vocab_size"):
        assert saved[key] == source[key], key
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial sibling left


def test_config_is_regenerated_from_the_provider_not_copied(llama):
    bridge = AutoBridge.from_hf_pretrained(llama)
    provider = bridge.to_megatron_provider()
    provider.layernorm_epsilon = 1e-3
    config = bridge.hf_config_for_export(provider)
    assert config.rms_norm_eps == 1e-3 and config.architectures == ["LlamaForCausalLM"]


def test_quantization_config_is_dropped_from_export(llama, tmp_path):
    folder = copy_folder(llama, tmp_path / "q")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gguf"}
    (folder / "config.json").write_text(json.dumps(cfg))
    bridge = AutoBridge.from_hf_pretrained(folder)
    assert "quantization_config" not in bridge.hf_config_for_export(bridge.to_megatron_provider()).to_dict()


def test_output_folder_is_refused_unless_overwrite(llama, tmp_path):
    bridge, model = convert(llama)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(CheckpointError, match="exists and is not empty; pass --overwrite"):
        bridge.save_hf_pretrained(model, tmp_path / "out")
    bridge.save_hf_pretrained(model, tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "keep.txt").exists()


def rewrite_weights(src: Path, dst: Path, edit) -> Path:
    folder = copy_folder(src, dst)
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")
    return folder


def test_unconsumed_hf_tensor_is_an_error_naming_it(llama, tmp_path):
    folder = rewrite_weights(llama, tmp_path / "x", lambda t: t.update({"model.extra.weight": torch.ones(3)}))
    bridge = AutoBridge.from_hf_pretrained(folder)
    model = bridge.to_megatron_provider().provide_distributed_model()
    with pytest.raises(CoverageError, match=r"1 HF tensor\(s\) are not consumed .* model\.extra\.weight"):
        bridge.load_hf_weights(model)
    bridge.load_hf_weights(model, allow_unmapped=["model.extra.weight"])


def test_missing_hf_tensor_is_an_error_naming_it(llama, tmp_path):
    folder = rewrite_weights(llama, tmp_path / "x", lambda t: t.pop("model.layers.1.mlp.down_proj.weight"))
    bridge = AutoBridge.from_hf_pretrained(folder)
    model = bridge.to_megatron_provider().provide_distributed_model()
    with pytest.raises(CoverageError, match=r"lacks 1 tensor\(s\).*model\.layers\.1\.mlp\.down_proj\.weight"):
        bridge.load_hf_weights(model)


def test_shape_mismatch_is_refused_before_loading(llama, tmp_path):
    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:16]

    bridge = AutoBridge.from_hf_pretrained(rewrite_weights(llama, tmp_path / "x", shrink))
    model = bridge.to_megatron_provider().provide_distributed_model()
    before = model[0].decoder.layers[1].mlp.linear_fc2.weight.clone()
    with pytest.raises(CoverageError, match=r"shape mismatch.*decoder\.layers\.0\.self_attention\.linear_qkv\.weight"):
        bridge.load_hf_weights(model)
    assert torch.equal(before, model[0].decoder.layers[1].mlp.linear_fc2.weight)  # nothing was loaded


def test_fp8_weights_without_dequantizing_hook_are_refused(llama, tmp_path):
    def to_fp8(t):
        name = "model.layers.0.mlp.up_proj.weight"
        t[name] = t[name].to(torch.float8_e4m3fn)
        t[name + "_scale_inv"] = torch.ones(2, 1)

    bridge = AutoBridge.from_hf_pretrained(rewrite_weights(llama, tmp_path / "x", to_fp8))
    model = bridge.to_megatron_provider().provide_distributed_model()
    with pytest.raises(CoverageError, match=r"quantized weights \(model\.layers\.0\.mlp\.up_proj\.weight is "):
        bridge.load_hf_weights(model)


def test_unmapped_megatron_parameter_is_an_error(llama, monkeypatch):
    from bridge_core.model.decoder import DecoderBridge

    original = DecoderBridge.embedding_mappings

    def without_norm(self):
        return [m for m in original(self) if "final_layernorm" not in m.megatron_param]

    monkeypatch.setattr(DecoderBridge, "embedding_mappings", without_norm)
    bridge = AutoBridge.from_hf_pretrained(llama)
    model = bridge.to_megatron_provider().provide_distributed_model()
    with pytest.raises(CoverageError, match=r"no mapping in DecoderBridge.*decoder\.final_layernorm\.weight"):
        bridge.load_hf_weights(model)


def test_config_key_that_changes_the_math_is_refused(llama, tmp_path):
    folder = copy_folder(llama, tmp_path / "x")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["mlp_bias"] = True
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"mlp_bias=True"):
        AutoBridge.from_hf_pretrained(folder).to_megatron_provider()


def test_tensor_parallel_that_does_not_divide_heads_is_refused(llama):
    provider = AutoBridge.from_hf_pretrained(llama).to_megatron_provider()
    provider.tensor_model_parallel_size = 2
    with pytest.raises(ConfigError, match=r"does not divide num_query_groups \(KV heads\)=3.*valid sizes: 1, 3"):
        provider.finalize()


@pytest.fixture(scope="module")
def moe(tmp_path_factory) -> tuple[Path, Path]:
    per_expert = build_toy(ToyModel("Qwen3MoeForCausalLM", MOE), tmp_path_factory.mktemp("moe"))
    return per_expert, _test_bridges.stack_experts(per_expert, tmp_path_factory.mktemp("stacked"), MOE["num_experts"])


def test_stacked_expert_checkpoint_converts_exactly(moe, tmp_path):
    per_expert, stacked = moe
    bridge, model = convert(stacked)
    ids = sample_ids(515, seq=48)
    assert max_abs_diff(forward_logits(model, ids, vocab_size=515), hf_logits(per_expert, ids)) <= 1e-4
    bridge.save_hf_pretrained(model, tmp_path / "out")
    assert compare_hf_weights(stacked, tmp_path / "out") == []


def test_parallel_paths_in_one_torchrun_launch(llama, llama_tied_bf16, moe, tmp_path):
    """TP=2, PP=2 (tied, bf16, built with load_weights), EP=2 and TP=2 over stacked experts, on gloo."""
    gqa2 = build_toy(ToyModel("LlamaForCausalLM", {**LLAMA, "num_key_value_heads": 2}), tmp_path / "gqa2")
    ids = sample_ids(515, seq=48)
    torch.save(ids, tmp_path / "ids.pt")
    plugin = {"module": "_test_bridges", "path": str(HERE)}
    matrix = {
        "llama-tp2": (gqa2, {"tp": 2}),
        "tied-bf16-pp2": (llama_tied_bf16, {"pp": 2, "load_weights": True}),
        "stacked-ep2": (moe[1], {"ep": 2}),
        "stacked-tp2": (moe[1], {"tp": 2}),
    }
    cases = [
        {
            "name": n,
            "hf_path": str(p),
            "ids": str(tmp_path / "ids.pt"),
            "out": str(tmp_path / n),
            "plugin": plugin,
            **settings,
        }
        for n, (p, settings) in matrix.items()
    ]
    results = run_cases(cases, tmp_path)
    for name, (folder, _) in matrix.items():
        result = results[name]
        assert result["error"] is None, f"{name}: {result['error']}"
        assert compare_hf_weights(folder, result["hf"]) == [], name
        reference = hf_logits(moe[0] if name.startswith("stacked") else folder, ids)
        diff = max_abs_diff(torch.load(result["logits"], weights_only=True), reference)
        assert diff <= (1e-4 if "bf16" not in name else 0.1), f"{name}: {diff}"


def test_fp8_blockwise_dequantization_matches_per_block_product():
    from bridge_core.model.quantization import dequantize_fp8_blockwise

    weight = torch.randn(200, 130).to(torch.float8_e4m3fn)
    scale = torch.rand(2, 2) + 0.5
    out = dequantize_fp8_blockwise(weight, scale)
    assert out.dtype == torch.bfloat16 and out.shape == (200, 130)
    assert torch.equal(out[:128, :128], (weight[:128, :128].float() * scale[0, 0]).to(torch.bfloat16))
    assert torch.equal(out[128:, 128:], (weight[128:, 128:].float() * scale[1, 1]).to(torch.bfloat16))
    with pytest.raises(ValueError, match=r"expected \(2, 2\)"):
        dequantize_fp8_blockwise(weight, torch.ones(1, 2))


def test_a_dequantizing_bridge_loads_fp8_weights(llama, tmp_path, monkeypatch):
    from bridge_core.model.decoder import DecoderBridge
    from bridge_core.model.quantization import dequantize_fp8_blockwise

    name = "model.layers.0.mlp.up_proj.weight"

    def to_fp8(t):
        t[name] = t[name].to(torch.float8_e4m3fn)
        t[name + "_scale_inv"] = torch.full((2, 1), 0.5)

    def load(self, hf_param, state):
        if isinstance(hf_param, dict):
            return {role: load(self, n, state) for role, n in hf_param.items()}
        if state[hf_param].dtype == torch.float8_e4m3fn:
            return dequantize_fp8_blockwise(state[hf_param], state[hf_param + "_scale_inv"], dtype=torch.float32)
        return state[hf_param]

    folder = rewrite_weights(llama, tmp_path / "x", to_fp8)
    monkeypatch.setattr(DecoderBridge, "dequantizes_hf_weights", True)
    monkeypatch.setattr(DecoderBridge, "maybe_modify_loaded_hf_weight", load)
    bridge, model = convert(folder)
    up = dict(bridge.export_hf_weights(model))[name]
    expected = load_file(folder / "model.safetensors")[name].to(torch.float32) * 0.5
    assert torch.equal(up, expected)


def test_exported_tensors_that_need_no_copy_are_views_of_the_live_parameters(llama):
    """What export_hf_weights documents: clone what you keep (here a CPU model, where no copy is needed)."""
    bridge, model = convert(llama)
    model[0].cpu()
    params = {p.untyped_storage().data_ptr(): n for n, p in model[0].named_parameters()}
    exported = dict(bridge.export_hf_weights(model, cpu=False))
    views = {n for n, t in exported.items() if t.untyped_storage().data_ptr() in params}
    assert {"model.embed_tokens.weight", "model.layers.0.mlp.gate_proj.weight"} <= views
    with torch.no_grad():
        exported["model.embed_tokens.weight"][0, 0] += 1.0
    assert model[0].embedding.word_embeddings.weight[0, 0] == exported["model.embed_tokens.weight"][0, 0]
