"""MTP layers: HF layers ``L..L+n-1`` (``num_nextn_predict_layers``) <-> megatron-core's MTP block.

transformers keeps no MTP weights (it ignores them on load), so the toys' are synthesised
(``_deepseek_toys.with_mtp``). Import fills the MTP block, export writes the layers back bit for bit;
an MTP checkpoint imported into a model without MTP is an error unless the tensors are skipped by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _deepseek_toys import V3_TOY, with_expert_bias, with_mtp
from bridge_core import AutoBridge
from bridge_core.errors import CoverageError
from bridge_core.runtime.inference import forward_logits
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.compare import compare_hf_weights, max_abs_diff
from bridge_core.testing.conformance import FP32_TOLERANCE, GPU_FP32_TOLERANCE
from bridge_core.testing.toy import ToyModel, hf_logits, sample_ids

V3 = ToyModel("DeepseekV3ForCausalLM", {**V3_TOY, "num_nextn_predict_layers": 1})


@pytest.fixture(scope="module")
def plain(toy_model_factory, tmp_path_factory) -> Path:
    """A V3 toy as transformers saves it: ``num_nextn_predict_layers=1`` and no MTP weights."""
    return with_expert_bias(toy_model_factory(V3), tmp_path_factory.mktemp)


@pytest.fixture(scope="module")
def mtp(plain, tmp_path_factory) -> Path:
    return with_mtp(plain, tmp_path_factory.mktemp("mtp") / "hf")


@pytest.fixture(scope="module")
def mtp_copies(plain, tmp_path_factory) -> Path:
    return with_mtp(plain, tmp_path_factory.mktemp("mtp-copies") / "hf", head_copies=True)


def _device(model) -> torch.device:
    return next(model[0].parameters()).device


def roundtrip(folder: Path, out: Path, **settings):
    bridge = AutoBridge.from_hf_pretrained(folder)
    provider = bridge.to_megatron_provider()
    for key, value in settings.items():
        setattr(provider, key, value)
    try:
        model = [c.cpu() for c in provider.provide_distributed_model(wrap_with_ddp=False)]  # CPU, as the references
        bridge.load_hf_weights(model)
        bridge.save_hf_pretrained(model, out)
        return provider, model
    finally:
        destroy_model_parallel()


def test_mtp_layers_import_and_export_bit_exact(mtp, tmp_path):
    provider, model = roundtrip(mtp, tmp_path / "out")
    assert provider.mtp_num_layers == 1
    names = dict(model[0].named_parameters())
    assert torch.equal(names["mtp.layers.0.eh_proj.weight"], _tensor(mtp, "model.layers.3.eh_proj.weight"))
    inner = {"mtp.layers.0.transformer_layer.", "mtp.layers.0.mtp_model_layer."}  # megatron-core 0.16, 0.19
    assert any(f"{prefix}mlp.router.expert_bias" in names for prefix in inner)
    assert compare_hf_weights(mtp, tmp_path / "out") == []
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_nextn_predict_layers"] == 1


def test_mtp_head_copies_are_read_and_written_back(mtp_copies, tmp_path):
    roundtrip(mtp_copies, tmp_path / "out")
    assert compare_hf_weights(mtp_copies, tmp_path / "out") == []


def test_a_differing_head_copy_is_refused(mtp_copies, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "hf"
    broken.mkdir()
    for f in mtp_copies.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    tensors = load_file(broken / "model.safetensors")
    tensors["model.layers.3.shared_head.head.weight"][0, 0] += 1.0
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(Exception, match=r"model\.layers\.3\.shared_head\.head\.weight differs from lm_head\.weight"):
        roundtrip(broken, tmp_path / "out")


def test_mtp_weights_into_a_model_without_mtp_is_an_error_unless_skipped(mtp, tmp_path):
    with pytest.raises(CoverageError) as err:
        roundtrip(mtp, tmp_path / "out", mtp_num_layers=None)
    message = str(err.value)
    assert "\n" not in message and "model.layers.3." in message and "allow_unmapped" in message
    bridge = AutoBridge.from_hf_pretrained(mtp)
    provider = bridge.to_megatron_provider()
    provider.mtp_num_layers = None
    skipped = [name for name in bridge.hf.weights.meta if name.startswith("model.layers.3.")]
    try:
        model = provider.provide_distributed_model(wrap_with_ddp=False)  # on a visible GPU: MLA's YaRN runs there
        bridge.load_hf_weights(model, allow_unmapped=skipped)
        ids = sample_ids(1000, seq=32)
        tolerance = GPU_FP32_TOLERANCE if _device(model).type == "cuda" else FP32_TOLERANCE
        assert max_abs_diff(forward_logits(model, ids, vocab_size=1000), hf_logits(mtp, ids)) <= tolerance
    finally:
        destroy_model_parallel()


def test_a_config_declaring_mtp_without_weights_builds_no_mtp_and_keeps_the_declaration(plain, tmp_path):
    provider, model = roundtrip(plain, tmp_path / "out")
    assert provider.mtp_num_layers is None and not hasattr(model[0], "mtp")
    assert compare_hf_weights(plain, tmp_path / "out") == []
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_nextn_predict_layers"] == 1


def hf_mtp_loss(folder: Path, ids: torch.Tensor, padded_vocab: int) -> float:
    """The MTP loss built from transformers' own modules, as megatron-core (and DeepSeek-V3) define it:
    ``h`` = the main model's final-normed hidden state at position t, ``e`` = the embedding of token t+1,
    ``x = eh_proj([enorm(e); hnorm(h)])`` through the MTP layer (an HF decoder layer holding HF layer L's
    weights), ``shared_head.norm``, ``lm_head``; cross-entropy against token t+2, averaged over the
    positions that have one (megatron-core's rolled labels)."""
    from transformers import AutoModelForCausalLM
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3DecoderLayer, DeepseekV3RMSNorm

    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    config, n, hidden = model.config, model.config.num_hidden_layers, model.config.hidden_size
    prefix = f"model.layers.{n}."
    from safetensors.torch import load_file

    weights = {k[len(prefix) :]: v for k, v in load_file(folder / "model.safetensors").items() if k.startswith(prefix)}
    layer = DeepseekV3DecoderLayer(config, layer_idx=n).eval()
    experts = range(config.n_routed_experts)
    e = "mlp.experts."
    weights[f"{e}gate_up_proj"] = torch.stack(
        [torch.cat([weights.pop(f"{e}{i}.gate_proj.weight"), weights.pop(f"{e}{i}.up_proj.weight")]) for i in experts]
    )
    weights[f"{e}down_proj"] = torch.stack([weights.pop(f"{e}{i}.down_proj.weight") for i in experts])
    layer.load_state_dict(
        {
            k: v
            for k, v in weights.items()
            if k.split(".")[0] in ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
        }
    )
    norms = {
        name: DeepseekV3RMSNorm(hidden, eps=config.rms_norm_eps) for name in ("enorm", "hnorm", "shared_head.norm")
    }
    for name, norm in norms.items():
        norm.weight.data.copy_(weights[f"{name}.weight"])
    eh_proj = torch.nn.Linear(2 * hidden, hidden, bias=False)
    eh_proj.weight.data.copy_(weights["eh_proj.weight"])
    batch, seq = ids.shape
    with torch.no_grad():
        h = model.model(ids).last_hidden_state
        e = model.model.embed_tokens(torch.roll(ids, -1, dims=1))
        x = eh_proj(torch.cat([norms["enorm"](e), norms["hnorm"](h)], dim=-1))
        positions = torch.arange(seq).unsqueeze(0).expand(batch, -1)
        mask = torch.full((seq, seq), float("-inf")).triu(1)[None, None]
        x = layer(
            x, attention_mask=mask, position_ids=positions, position_embeddings=model.model.rotary_emb(x, positions)
        )
        logits = model.lm_head(norms["shared_head.norm"](x))
        logits = torch.nn.functional.pad(logits, (0, padded_vocab - logits.shape[-1]))
    targets = ids[:, 2:]  # token t+2, for the positions that have one
    ce = torch.nn.functional.cross_entropy(logits[:, : seq - 2].reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return ce.item()


def test_mtp_loss_equals_the_one_built_from_transformers_modules(mtp):
    from bridge_core.runtime.cpu_support import causal_mask
    from megatron.core.transformer.multi_token_prediction import MTPLossLoggingHelper

    bridge = AutoBridge.from_hf_pretrained(mtp)
    provider = bridge.to_megatron_provider()
    ids = sample_ids(1000, seq=32)
    try:
        model = provider.provide_distributed_model(wrap_with_ddp=False)  # on a visible GPU: MLA's YaRN runs there
        bridge.load_hf_weights(model)
        gpt = model[0].train()  # megatron-core records the MTP loss in training mode (dropout is 0)
        device = _device(model)
        tracker = MTPLossLoggingHelper.tracker
        tracker.pop("values", None), tracker.pop("loss_values", None)
        labels, loss_mask = torch.roll(ids, -1, dims=1), torch.ones_like(ids)  # next-token labels,
        loss_mask[:, -1] = 0  # the last position has none
        positions = torch.arange(32, device=device).unsqueeze(0).expand(2, -1)
        with torch.no_grad():
            gpt(
                ids.to(device),
                positions,
                causal_mask(32, device),
                labels=labels.to(device),
                loss_mask=loss_mask.to(device),
            )
        ours = tracker.get("values", tracker.get("loss_values"))[0].item()
    finally:
        destroy_model_parallel()
    reference = hf_mtp_loss(mtp, ids, provider.vocab_size_with_padding)
    relative = 1e-5 if device.type == "cpu" else 1e-4  # GPU kernels against transformers on the CPU
    assert abs(ours - reference) <= relative * reference, (ours, reference)


def test_mtp_weights_drive_the_mtp_loss_only(mtp):
    """With labels, the MTP block adds its loss (megatron-core's tracker) and leaves the main logits alone."""
    from bridge_core.runtime.cpu_support import causal_mask
    from megatron.core.transformer.multi_token_prediction import MTPLossLoggingHelper

    bridge = AutoBridge.from_hf_pretrained(mtp)
    provider = bridge.to_megatron_provider()
    losses = []
    try:
        model = provider.provide_distributed_model(wrap_with_ddp=False)  # on a visible GPU: MLA's YaRN runs there
        bridge.load_hf_weights(model)
        gpt = model[0].train()  # megatron-core records the MTP loss in training mode (dropout is 0)
        device = _device(model)
        ids = sample_ids(1000, seq=32).to(device)
        position_ids = torch.arange(32, device=device).unsqueeze(0).expand(2, -1)
        for scale in (1.0, 0.5):
            with torch.no_grad():
                gpt.mtp.layers[0].eh_proj.weight.mul_(scale)
                tracker = MTPLossLoggingHelper.tracker
                tracker.pop("values", None), tracker.pop("loss_values", None)  # megatron-core 0.16, 0.19
                main = gpt(ids, position_ids, causal_mask(32, device), labels=ids)
                losses.append((main.clone(), tracker.get("values", tracker.get("loss_values")).clone()))
    finally:
        destroy_model_parallel()
    (main_a, mtp_a), (main_b, mtp_b) = losses
    # bit-equal on the CPU; on an H200 two runs differed in their last bits (MoE sums in varying order)
    atol = 0.0 if main_a.device.type == "cpu" else 1e-5
    assert torch.allclose(main_a, main_b, rtol=0.0, atol=atol) and torch.isfinite(mtp_a).all()
    assert (mtp_a - mtp_b).abs().max() > 1e-3


def _tensor(folder: Path, name: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as f:
        return f.get_tensor(name)


def test_mtp_roundtrip_dist_tp2_pp2_ep2(toy_model_factory, tmp_path_factory, tmp_path):
    """4 layers, so that PP=2 puts 2 on each stage and the MTP block (with megatron-core's duplicate of the
    embedding) on the second."""
    from bridge_core.testing.pytest_plugin import CpuLauncher

    four = with_expert_bias(
        toy_model_factory(ToyModel("DeepseekV3ForCausalLM", {**V3.config, "num_hidden_layers": 4})),
        tmp_path_factory.mktemp,
    )
    folder = with_mtp(four, tmp_path / "hf", head_copies=True)
    cases = [{"name": "tp2", "tp": 2}, {"name": "pp2", "pp": 2}, {"name": "ep2", "ep": 2}]
    spec = {"hf_path": str(folder), "out": str(tmp_path / "out"), "cases": cases}
    (tmp_path / "out").mkdir()
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {"BRIDGE_PLUGINS": "deepseek", "BRIDGE_STRICT_PLUGINS": "1"}
    CpuLauncher(tmp_path_factory.mktemp, nproc=2).run_script(
        Path(__file__).with_name("_deepseek_mtp_dist.py"), str(tmp_path / "spec.json"), env=env
    )
    errors = json.loads((tmp_path / "out" / "errors.json").read_text())
    for case in cases:
        assert errors[case["name"]] is None, errors[case["name"]]
        assert compare_hf_weights(folder, tmp_path / "out" / case["name"]) == [], case["name"]
