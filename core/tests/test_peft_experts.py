"""LoRA on MoE experts (``experts.linear_fc1``/``linear_fc2``, opt-in): exported as ``target_parameters`` on
transformers 5's fused expert tensors, the adapter is the same function in ``peft`` (logits within 1e-4),
merged or not, reloads bit for bit, and an adapter ``peft`` made loads exactly; at EP=2 and ETP=2 (two CPU
ranks, one launch) training follows world 1 and the exported adapter equals ``peft`` again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core.datasets.helpers_cpp")
import _training_plugin  # noqa: E402
import peft  # noqa: E402,F401  (tox installs it: a missing peft must fail, not skip)

from bridge_core.errors import ConfigError  # noqa: E402
from bridge_core.peft import workflows  # noqa: E402
from bridge_core.plugins.discovery import reset_registry  # noqa: E402
from bridge_core.runtime.parallel import destroy_model_parallel  # noqa: E402
from bridge_core.testing.compare import max_abs_diff  # noqa: E402
from bridge_core.testing.launch import torchrun  # noqa: E402
from bridge_core.testing.peft import PEFT_IDS, megatron_peft_logits, peft_logits  # noqa: E402
from bridge_core.training.recipe import load_recipe  # noqa: E402
from bridge_core.training.trainer import train  # noqa: E402

HERE = Path(__file__).parent
EXPERTS = "peft.targets=experts.linear_fc1,experts.linear_fc2"
OVERRIDES = [
    "peft.scheme=lora", "peft.rank=4", "peft.alpha=8", "data.kind=mock", "train.iters=4",
    "checkpoint.save_interval=4", "optimizer.lr=1e-2", "scheduler.lr_warmup_iters=0",
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def plugin():
    _training_plugin.use()
    yield
    reset_registry()


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    from _test_bridges import stack_experts

    from bridge_core.testing.toy import ToyModel, build_toy

    toy = _training_plugin.MOE_TOY
    per_expert = build_toy(ToyModel("Qwen3MoeForCausalLM", toy), tmp_path_factory.mktemp("moe"))
    return stack_experts(per_expert, tmp_path_factory.mktemp("moe-stacked"), toy["num_experts"])


def _train(hf, overrides):
    try:
        return train(load_recipe("toy_moe_sft").with_overrides(overrides), hf_model=hf)
    finally:
        destroy_model_parallel()


@pytest.fixture(scope="module")
def run(hf, tmp_path_factory):
    save = tmp_path_factory.mktemp("experts") / "run"
    _train(hf, [*OVERRIDES, EXPERTS, f"checkpoint.save={save}"])
    return save


def test_expert_adapter_in_peft_equals_the_megatron_model(run, hf, tmp_path):
    from megatron.core import dist_checkpointing

    keys = [k for k in dist_checkpointing.load_tensors_metadata(str(run / "iter_0000004")) if "optimizer" not in k]
    assert keys and all(".mlp.experts.experts.linear_fc" in k and ".adapter.lora_" in k for k in keys), keys
    adapter = workflows.export_adapter(run, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["target_modules"] is None and config["use_dora"] is False
    assert config["target_parameters"] == [
        f"model.layers.{i}.mlp.experts.{p}" for i in (0, 1) for p in ("down_proj", "gate_up_proj")
    ]
    ours = megatron_peft_logits(hf, run, PEFT_IDS)
    theirs, base = peft_logits(hf, adapter, PEFT_IDS)
    print(f"experts, one rank: max |Megatron - peft| logits = {max_abs_diff(ours, theirs):.2e}")
    assert max_abs_diff(ours, theirs) < 1e-4
    assert max_abs_diff(ours, base) > 1e-2  # the expert adapters change the function


def test_merged_experts_equal_the_unmerged_megatron_model(run, hf, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    merged = workflows.merge_adapter(run, tmp_path / "merged")
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)(PEFT_IDS).logits
    diff = max_abs_diff(logits, megatron_peft_logits(hf, run, PEFT_IDS))
    print(f"experts, merged: max |Megatron - transformers| logits = {diff:.2e}")
    assert diff < 1e-4
    before, after = load_file(str(hf / "model.safetensors")), load_file(str(merged / "model.safetensors"))
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == [f"model.layers.{i}.mlp.experts.{p}" for i in (0, 1) for p in ("down_proj", "gate_up_proj")]


def test_expert_adapter_loads_into_megatron_and_exports_bit_identical(run, hf, tmp_path):
    from safetensors.torch import load_file

    adapter = workflows.export_adapter(run, tmp_path / "adapter")
    again, logits = _load_and_export(hf, adapter)
    written = load_file(str(adapter / "adapter_model.safetensors"))
    assert again.keys() == written.keys()
    assert all(torch.equal(again[k], written[k]) for k in written)
    assert max_abs_diff(logits, peft_logits(hf, adapter, PEFT_IDS)[0]) < 1e-4


def _load_and_export(hf, adapter):
    from test_peft import one_rank_model

    from bridge_core.peft.load import hf_adapter_of_model
    from bridge_core.runtime.inference import forward_logits

    with one_rank_model(hf) as (bridge, model):
        bridge.load_hf_adapter(model, adapter)
        return hf_adapter_of_model(bridge, model), forward_logits(model, PEFT_IDS)


@pytest.mark.parametrize(
    ("modules", "parameters"),
    [
        ([], ["gate_up_proj"]),  # one expert tensor: no nesting
        (["q_proj", "v_proj"], ["gate_up_proj", "down_proj"]),  # dense modules and nested expert wrappers
    ],
)
def test_an_expert_adapter_peft_made_loads_exactly(hf, tmp_path, modules, parameters):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=modules, target_parameters=parameters, init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(tmp_path / "adapter")  # random A and B, as if trained
    theirs, base = peft_logits(hf, tmp_path / "adapter", PEFT_IDS)
    again, ours = _load_and_export(hf, tmp_path / "adapter")
    print(f"peft's {modules + parameters}: max |Megatron - peft| logits = {max_abs_diff(ours, theirs):.2e}")
    assert max_abs_diff(ours, theirs) < 1e-4
    assert max_abs_diff(ours, base) > 1e-2
    if not modules:  # rank r kept (q_proj and v_proj with an A each need rank 2r, the experts padded to it)
        written = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
        assert again.keys() == written.keys() and all(torch.equal(again[k], v) for k, v in written.items())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("peft.scheme=dora", "peft.scheme=dora with peft.targets experts.linear_fc1: expert adapters are LoRA only"),
        ("peft.dropout=0.1", "peft.dropout=0.1 with peft.targets experts.linear_fc1: expert adapters need 0"),
        ("parallel.ep=2", "experts.linear_fc2 with parallel.ep=2, etp=1: add a dense target"),
    ],
)
def test_dora_or_dropout_on_experts_is_refused(tmp_path, change, message):
    overrides = [*OVERRIDES, EXPERTS, change, f"checkpoint.save={tmp_path / 'x'}"]
    with pytest.raises(ConfigError, match=message):
        load_recipe("toy_moe_sft").with_overrides(overrides).config.check()


def test_expert_targets_on_a_dense_model_are_refused(tmp_path):
    from bridge_core.testing.toy import ToyModel, build_toy

    dense = build_toy(ToyModel("LlamaForCausalLM", _training_plugin.TOY), tmp_path / "dense")
    overrides = [*OVERRIDES, "peft.targets=experts.linear_fc2", f"checkpoint.save={tmp_path / 'x'}"]
    with pytest.raises(ConfigError, match="peft.targets=experts.linear_fc2: the model has no MoE experts"):
        train(load_recipe("toy_sft").with_overrides(overrides), hf_model=dense)
    destroy_model_parallel()


@pytest.fixture(scope="module")
def two_ranks(hf, tmp_path_factory):
    """EP=2 and ETP=2 runs (linear_proj and the experts), their world-1 reference and the adapted models'
    logits: one launch."""
    work = tmp_path_factory.mktemp("experts-dist")
    reference = tmp_path_factory.mktemp("experts-world1") / "run"
    with_dense = EXPERTS.replace("=", "=linear_proj,")  # at EP > 1 a dense target too (see the config check)
    world1 = _train(hf, [*OVERRIDES, with_dense, f"checkpoint.save={reference}"]).losses
    proc = torchrun([str(HERE / "_peft_experts_dist.py"), str(work), str(hf)], nproc=2, timeout=600)
    file = work / "results.json"
    assert file.exists(), f"torchrun exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(file.read_text()), work, world1


@pytest.mark.parametrize("case", ["ep2", "etp2"])
def test_expert_adapters_on_two_ranks_follow_world_1_and_equal_peft(two_ranks, hf, tmp_path, case):
    results, work, world1 = two_ranks
    got = results[case]
    assert got["error"] is None, got["error"]
    # rank 0's expert adapters: EP=2 holds global experts 0 and 1 of 4; ETP=2 all four, split in two
    assert got["layout"] == (
        {"experts": [0, 1], "expert_tp": [1]} if case == "ep2" else {"experts": [0, 1, 2, 3], "expert_tp": [2]}
    )
    worst = max(abs(got["losses"][str(i)] - world1[i]) for i in world1)
    print(f"experts {case}: max |loss - world-1 loss| over 4 steps = {worst:.2e}")
    assert worst < 1e-5, (got["losses"], world1)
    adapter = workflows.export_adapter(work / case, tmp_path / "adapter")
    theirs, base = peft_logits(hf, adapter, PEFT_IDS)
    ours = torch.tensor(got["logits"])
    print(f"experts {case}: max |Megatron - peft| logits = {max_abs_diff(ours, theirs):.2e}")
    assert max_abs_diff(ours, theirs) < 1e-4
    assert max_abs_diff(ours, base) > 1e-2
