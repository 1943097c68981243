"""PEFT (LoRA, DoRA) on one rank: only the adapters train and are saved, resume is exact, and the exported
adapter is the same function in ``peft`` (logits within 1e-4), merged or not, and reloads bit for bit."""

from __future__ import annotations

import contextlib
import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core.datasets.helpers_cpp")
import _training_plugin  # noqa: E402
import peft  # noqa: E402,F401  (tox installs it: a missing peft must fail, not skip)

from bridge_core.errors import CheckpointError, ConfigError  # noqa: E402
from bridge_core.peft import workflows  # noqa: E402
from bridge_core.plugins.discovery import reset_registry  # noqa: E402
from bridge_core.runtime.parallel import destroy_model_parallel  # noqa: E402
from bridge_core.testing.compare import max_abs_diff  # noqa: E402
from bridge_core.testing.peft import megatron_peft_logits, peft_logits  # noqa: E402
from bridge_core.training.recipe import load_recipe  # noqa: E402
from bridge_core.training.trainer import train  # noqa: E402

IDS = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))


def peft_overrides(scheme: str, save) -> list[str]:
    return [
        f"peft.scheme={scheme}",
        "peft.rank=4",
        "peft.alpha=8",
        "data.kind=mock",
        "train.iters=4",
        "checkpoint.save_interval=2",
        "optimizer.lr=1e-2",
        "scheduler.lr_warmup_iters=0",
        f"checkpoint.save={save}",
    ]


@pytest.fixture(scope="module", autouse=True)
def plugin():
    _training_plugin.use()
    yield
    reset_registry()


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    from bridge_core.testing.toy import ToyModel, build_toy

    return build_toy(ToyModel("LlamaForCausalLM", _training_plugin.TOY), tmp_path_factory.mktemp("peft") / "hf")


@contextlib.contextmanager
def one_rank_model(hf):
    """(AutoBridge, the HF toy's Megatron model on one CPU rank); model parallelism torn down after."""
    from bridge_core.conversion.auto_bridge import AutoBridge
    from bridge_core.runtime.cpu_support import cuda_on_cpu
    from bridge_core.runtime.parallel import ParallelSizes, ensure_model_parallel, ensure_process_group

    ensure_process_group()
    with cuda_on_cpu():
        ensure_model_parallel(ParallelSizes())
        try:
            bridge = AutoBridge.from_hf_pretrained(hf)
            yield bridge, bridge.to_megatron_provider(load_weights=True).provide_distributed_model(wrap_with_ddp=False)
        finally:
            destroy_model_parallel()


def _train(hf, overrides):
    try:
        return train(load_recipe("toy_sft").with_overrides(overrides), hf_model=hf)
    finally:
        destroy_model_parallel()


@pytest.fixture(scope="module", params=["lora", "dora"])
def run(request, hf, tmp_path_factory):
    save = tmp_path_factory.mktemp(request.param) / "run"
    result = _train(hf, peft_overrides(request.param, save))
    return request.param, save, result


def test_the_checkpoint_holds_adapters_only_and_the_loss_falls(run):
    from megatron.core import dist_checkpointing

    scheme, save, result = run
    keys = [k for k in dist_checkpointing.load_tensors_metadata(str(save / "iter_0000004")) if "optimizer" not in k]
    parts = {"lora_A", "lora_B"} | ({"magnitude"} if scheme == "dora" else set())
    assert keys and all(".adapter." in k for k in keys), keys
    assert {k.rsplit(".", 1)[1] for k in keys} == parts
    assert len(keys) == 4 * len(parts)  # 4 targets, stacked over the layers
    assert json.loads((save / "peft.json").read_text())["base"]["hf_model"]
    assert result.losses[4] < result.losses[1]


def test_exported_adapter_in_peft_equals_the_megatron_model(run, hf, tmp_path):
    scheme, save, _ = run
    adapter = workflows.export_adapter(save, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["use_dora"] == (scheme == "dora") and config["r"] == 4 and config["lora_alpha"] == 8
    ours = megatron_peft_logits(hf, save, IDS)
    theirs, base = peft_logits(hf, adapter, IDS)
    assert max_abs_diff(ours, theirs) < 1e-4
    assert max_abs_diff(ours, base) > 1e-2  # the adapters change the function


def test_merged_model_equals_the_unmerged_megatron_model(run, hf, tmp_path):
    from transformers import AutoModelForCausalLM

    _, save, _ = run
    merged = workflows.merge_adapter(save, tmp_path / "merged")
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)(IDS).logits
    assert max_abs_diff(logits, megatron_peft_logits(hf, save, IDS)) < 1e-4
    assert (merged / "config.json").is_file()


def test_hf_adapter_loads_into_megatron_and_exports_bit_identical(run, hf, tmp_path):
    from safetensors.torch import load_file

    from bridge_core.peft.load import hf_adapter_of_model
    from bridge_core.runtime.inference import forward_logits

    _, save, _ = run
    adapter = workflows.export_adapter(save, tmp_path / "adapter")
    with one_rank_model(hf) as (bridge, model):
        bridge.load_hf_adapter(model, adapter)
        again = hf_adapter_of_model(bridge, model)
        logits = forward_logits(model, IDS)
    written = load_file(str(adapter / "adapter_model.safetensors"))
    assert again.keys() == written.keys()
    assert all(torch.equal(again[k], written[k]) for k in written)
    assert max_abs_diff(logits, peft_logits(hf, adapter, IDS)[0]) < 1e-4


def test_resume_is_exact_and_the_base_is_not_saved(hf, tmp_path):
    full = tmp_path / "full"
    reference = _train(hf, peft_overrides("lora", full))
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "iter_0000004")
    (cut / "latest_checkpointed_iteration.txt").write_text("2")
    resumed = _train(hf, peft_overrides("lora", cut))
    assert resumed.losses == {k: v for k, v in reference.losses.items() if k > 2}


def test_peft_needs_a_base_model(tmp_path):
    with pytest.raises(ConfigError, match="peft.scheme=lora trains adapters on an existing model"):
        train(load_recipe("toy_pretrain").with_overrides(peft_overrides("lora", tmp_path / "x")))


def test_a_full_run_does_not_resume_a_peft_checkpoint(run, hf, tmp_path):
    _, save, _ = run
    target = tmp_path / "copy"
    shutil.copytree(save, target)
    overrides = [o for o in peft_overrides("lora", target) if not o.startswith("peft.")] + ["train.iters=6"]
    with pytest.raises(CheckpointError, match="holds PEFT adapters"):
        _train(hf, overrides)


def test_export_of_a_peft_checkpoint_points_to_peft_export(run, tmp_path):
    from bridge_core.checkpoints.checkpoint_load import load_weights_into

    _, save, _ = run
    with pytest.raises(CheckpointError, match="bridgectl peft export"):
        load_weights_into([], save)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"peft_type": "IA3"}, "peft_type='IA3'"),
        ({"rank_pattern": {"q_proj": 8}}, "rank_pattern is not supported"),
        ({"use_rslora": True}, "use_rslora=True is not supported"),
        ({"target_modules": ["q_proj", "lm_head"]}, "target_modules 'lm_head' cannot be placed"),
    ],
)
def test_unsupported_adapter_configs_are_one_line_errors(run, hf, tmp_path, change, message):
    from bridge_core.conversion.auto_bridge import AutoBridge
    from bridge_core.peft.load import read_adapter_config

    _, save, _ = run
    adapter = workflows.export_adapter(save, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **change}))
    bridge = AutoBridge.from_hf_pretrained(hf)
    with pytest.raises(ConfigError, match=message):
        read_adapter_config(adapter, bridge.bridge.mapping_registry(), 2)


@pytest.mark.parametrize(
    ("scheme", "targets"),
    [
        ("lora", ["q_proj", "v_proj"]),  # peft's default for Llama: an A of its own each, k_proj not adapted
        ("lora", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
        ("dora", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    ],
)
def test_an_adapter_peft_trained_loads_exactly(hf, tmp_path, scheme, targets):
    """``peft``'s own adapters (one A per projection) on fused Megatron linears: stacked A, block-diagonal B."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from bridge_core.runtime.inference import forward_logits

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=scheme == "dora", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(tmp_path / "adapter")  # random A and B, as if trained
    theirs, base = peft_logits(hf, tmp_path / "adapter", IDS)
    with one_rank_model(hf) as (bridge, megatron):
        loaded = bridge.load_hf_adapter(megatron, tmp_path / "adapter")
        ours = forward_logits(megatron, IDS)
    assert loaded.rank == (8 if targets == ["q_proj", "v_proj"] else 12) and loaded.alpha / loaded.rank == 2.0
    assert max_abs_diff(ours, theirs) < 1e-4
    assert max_abs_diff(ours, base) > 1e-2


def test_dora_on_part_of_a_fused_linear_is_refused(hf, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True)
    get_peft_model(model, config).save_pretrained(tmp_path / "adapter")
    with one_rank_model(hf) as (bridge, megatron):
        with pytest.raises(ConfigError, match="k_proj has no DoRA magnitude"):
            bridge.load_hf_adapter(megatron, tmp_path / "adapter")


def test_training_starts_from_an_hf_adapter(hf, tmp_path):
    """``peft.adapter``: a run continues an adapter peft trained; at lr 0 its export is the same function."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(tmp_path / "start")
    save = tmp_path / "run"
    overrides = [o for o in peft_overrides("lora", save) if not o.startswith(("peft.rank", "peft.alpha"))]
    _train(hf, [*overrides, f"peft.adapter={tmp_path / 'start'}", "optimizer.lr=0", "optimizer.min_lr=0"])
    document = json.loads((save / "peft.json").read_text())
    assert (document["rank"], document["alpha"], document["targets"]) == (8, 16.0, ["linear_qkv"])
    again = workflows.export_adapter(save, tmp_path / "again")
    before, base = peft_logits(hf, tmp_path / "start", IDS)
    after, _ = peft_logits(hf, again, IDS)
    assert max_abs_diff(before, after) < 1e-5
    assert max_abs_diff(before, base) > 1e-2
