"""``bridgectl recipes`` / ``recipe show`` / ``train`` with the real plugins: listing without torch, every
shipped recipe resolving, bad input refused before any rank starts, and a 2-rank run exported to HF."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "vocab_size": 256,
    "max_position_embeddings": 128,
}
# the architectures bridge-llama's and bridge-qwen's recipes are for
ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM",
)
TINY = [
    "data.kind=mock",
    "train.iters=2",
    "train.global_batch_size=4",
    "train.micro_batch_size=2",
    "train.seq_length=32",
    "scheduler.lr_warmup_iters=1",
    "optimizer.lr=1e-3",
]


def bridgectl(*args: str) -> subprocess.CompletedProcess:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")},
        "BRIDGE_PLUGINS": "llama,qwen",
        "OMP_NUM_THREADS": "1",
    }
    exe = Path(sys.executable).parent / "bridgectl"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600, env=env)


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def shipped() -> list[str]:
    proc = bridgectl("recipes", "--json")
    assert proc.returncode == 0, proc.stderr
    return [r["name"] for r in json.loads(proc.stdout)["recipes"]]


def fresh_python(code: str) -> str:
    """The last line ``code`` prints in a new interpreter with bridge-llama and bridge-qwen selected."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}, "BRIDGE_PLUGINS": "llama,qwen"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return proc.stdout.strip().splitlines()[-1]


def test_recipes_lists_every_shipped_recipe_without_importing_torch():
    code = (
        "import sys, json, io, contextlib\nfrom bridge_core.cli.main import main\nout = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n    assert main(['recipes', '--json']) == 0\n"
        "rows = json.loads(out.getvalue())['recipes']\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'megatron', 'transformers'})\n"
        "print(json.dumps({'rows': rows, 'heavy': heavy, 'recipes_imported': 'bridge_llama.recipes' in sys.modules}))"
    )
    doc = json.loads(fresh_python(code))
    assert doc["heavy"] == [] and doc["recipes_imported"] is False
    rows = {r["name"]: r for r in doc["rows"]}
    assert rows["llama32_1b_pretrain"] | {"version": None} == {
        "name": "llama32_1b_pretrain",
        "family": "llama",
        "kind": "pretrain",
        "distribution": "bridge-llama",
        "version": None,
        "recipe": "bridge_llama.recipes:llama32_1b_pretrain",
    }
    assert rows["qwen3_8b_pretrain"]["distribution"] == "bridge-qwen" and rows["llama32_1b_sft"]["kind"] == "sft"
    assert {"smollm2_135m_pretrain", "llama31_70b_pretrain", "qwen3_32b_pretrain"} <= set(rows)


def test_every_shipped_recipe_resolves_with_dry_run_without_torch(capsys, clean_plugin_env, monkeypatch):
    from bridge_core.cli.main import main
    from bridge_core.training.recipe import load_recipe

    monkeypatch.setenv("BRIDGE_PLUGINS", "llama,qwen")
    names = shipped()
    assert len(names) >= 15
    for name in names:
        world = max(16, load_recipe(name).sized_for.gpus)  # Qwen3-235B-A22B: TP=4 x PP=16 on 256 GPUs
        assert main(["train", "--recipe", name, "--dry-run", "--nproc", str(world)]) == 0, name
        doc = json.loads(capsys.readouterr().out)
        parallel = doc["config"]["parallel"]
        assert doc["name"] == name and doc["sized_for"]["gpus"] >= parallel["tp"] * parallel["pp"]
        assert doc["run"]["data_parallel"] == world // (parallel["tp"] * parallel["pp"] * parallel["cp"])
        assert doc["model"]["architecture"] in ARCHITECTURES
        assert (doc["model"]["hf_config"] is None) == (doc["kind"] in ("sft", "peft")), name
    code = (
        "import sys, io, contextlib\nfrom bridge_core.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['train', '--recipe', 'qwen3_8b_peft', '--dry-run', '--nproc', '16']) == 0\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'megatron', 'transformers'}))"
    )
    assert fresh_python(code) == "[]"
    assert main(["recipe", "show", "qwen3_8b_pretrain", "train.iters=600", "parallel.tp=2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config"]["train"]["iters"] == 600 and doc["config"]["parallel"]["tp"] == 2
    assert doc["config"]["optimizer"]["lr"] == 3e-4 and doc["config"]["model"] == {"init_method_std": 0.02}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    from bridge_core.testing.toy import ToyModel, build_toy

    return build_toy(ToyModel("LlamaForCausalLM", LLAMA), tmp_path_factory.mktemp("toy") / "hf")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["--recipe", "qwen3_600m_sft", "--hf-model", "{toy}"],
            ["recipe 'qwen3_600m_sft' is for Qwen3ForCausalLM", "LlamaForCausalLM"],
        ),
        (
            ["--recipe", "smollm2_135m_sft", "--hf-model", "{toy}", "train.seq_length=256"],
            ["train.seq_length=256 is longer than the model's 128 positions"],
        ),
        (
            ["--recipe", "smollm2_135m_sft", "--hf-model", "{toy}", "--nproc", "3", "parallel.tp=2"],
            ["world size 3 is not a multiple of parallel.tp=2"],
        ),
        (
            ["--recipe", "smollm2_135m_sft", "--hf-model", "{toy}", "train.global_batch_size=6", "--nproc", "4"],
            ["train.global_batch_size=6 is not a multiple of train.micro_batch_size=1 x data parallel 4"],
        ),
        (
            ["--recipe", "smollm2_135m_sft", "--hf-model", "{toy}", "train.seq_length=64", "data.sft_prefix=d/a"],
            ["data.sft_prefix: d/a_tokens.bin does not exist", "bridgectl data prepare --format sft"],
        ),
        (
            ["--recipe", "smollm2_135m_sft", "data.kind=mock", "checkpoint.save=x"],
            ["trains an existing model: pass --hf-model"],
        ),
        (
            ["--recipe", "smollm2_135m_pretrian"],
            ["unknown recipe 'smollm2_135m_pretrian'; did you mean smollm2_135m_pretrain"],
        ),
        (
            ["--recipe", "smollm2_135m_pretrain", "optimizer.name=lion"],
            ["optimizer.name: 'lion' is not valid; expected adam | adamw"],
        ),
    ],
)
def test_bad_input_is_one_line_before_any_rank_starts(toy, tmp_path, args, fragments):
    args = [a.replace("{toy}", str(toy)) for a in args]
    if not any(a.startswith("checkpoint.save=") for a in args):
        args.append(f"checkpoint.save={tmp_path / 'run'}")
    one_line_error(bridgectl("train", *args), *fragments)
    assert not (tmp_path / "run").exists()


def test_train_on_two_ranks_then_export_the_trained_checkpoint(toy, tmp_path):
    save = tmp_path / "run"
    proc = bridgectl(
        "train",
        "--recipe",
        "smollm2_135m_sft",
        "--hf-model",
        str(toy),
        "--nproc",
        "2",
        *TINY,
        f"checkpoint.save={save}",
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and "step 2/2" in proc.stdout
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "2"
    exported = tmp_path / "hf"
    proc = bridgectl("export", "--megatron-path", str(save), "--hf-path", str(exported))
    assert proc.returncode == 0, proc.stderr
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 2
