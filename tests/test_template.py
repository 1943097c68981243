"""The plugin template (``cookiecutter-plugin/``) and ``bridgectl new-plugin`` (run by ``tox -e template``).

Bakes LLM plugins shaped like Mistral and Qwen2 with pytest-cookies, installs each into this
environment, and runs the baked project's own test suite (bridge-core's conformance kit) and its
linter for real: they must pass without edits. Checks that the pre-generation hook refuses bad
names, and runs ``bridgectl new-plugin --from-config`` on configs with unknown fields, a VLM config
and FP8 configs.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cookiecutter", reason="needs bridge-core[template]: run tox -e template")
pytest.importorskip("pytest_cookies", reason="needs pytest-cookies: run tox -e template")

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "cookiecutter-plugin"
BIN = Path(sys.executable).parent

MISTRAL_CONFIG = {
    "architectures": ["MistralForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mistral",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.42.0",
    "use_cache": True,
    "vocab_size": 32768,
}


def env_without_plugin_settings(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}, **extra}


def bridgectl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``bridgectl`` as a user runs it, with stdin not a terminal (so it never prompts)."""
    return subprocess.run(
        [str(BIN / "bridgectl"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        env=env_without_plugin_settings(),
    )


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=900)


# -- bake, install and run the baked project's own tests ---------------------------------------
SHAPES = {
    "mistral": {"family": "tmplmistral", "architectures": "MistralForCausalLM", "model_type": "mistral"},
    "qwen2": {"family": "tmpl_qwen", "architectures": "Qwen2ForCausalLM", "model_type": "qwen2"},
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def installed_plugin(request, cookies_session):
    """A plugin baked for a standard decoder and pip-installed here (uninstalled afterwards)."""
    context = {**SHAPES[request.param], "kind": "LLM", "author": "Template Test"}
    result = cookies_session.bake(extra_context=context, template=str(TEMPLATE))
    assert result.exit_code == 0, result.exception
    project = Path(result.project_path)
    proc = pip("install", "--quiet", str(project))
    assert proc.returncode == 0, proc.stderr[-4000:]
    yield project, context
    pip("uninstall", "--yes", "--quiet", project.name)


def test_baked_plugin_passes_its_own_test_suite(installed_plugin):
    project, context = installed_plugin
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:cookies"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=1800,
        env=env_without_plugin_settings(BRIDGE_STRICT_PLUGINS="1"),
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 12 and "failed" not in summary and "error" not in summary, summary
    # every conformance check ran on the CPU: registration, config, roundtrip + parity, TP=2 and PP=2
    for name in ("test_plugin_registers", "test_roundtrip_is_bit_exact", "test_parallel_layout"):
        assert name in _collected(project), name


def _collected(project: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        env=env_without_plugin_settings(),
    )
    return proc.stdout


def test_baked_plugin_is_lint_clean_and_complete(installed_plugin):
    project, context = installed_plugin
    module, family = f"bridge_{context['family']}", context["family"]
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=project, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout
    slug = context["model_type"]
    expected = [
        "pyproject.toml",
        "tox.ini",
        "README.md",
        "CHANGELOG.md",
        ".github/workflows/ci.yml",
        f"docs/{family}.md",
        f"src/{module}/plugin.py",
        f"src/{module}/bridge.py",
        f"src/{module}/recipes.py",
        f"src/{module}/flops.py",
        f"src/{module}/modeling_{slug}/__init__.py",
        f"tests/test_{family}_conformance.py",
        *(f"examples/{slug}/{s}" for s in ("conversion.sh", "inference.sh", "slurm_sft.sh", "slurm_peft.sh")),
    ]
    missing = [p for p in expected if not (project / p).is_file()]
    assert missing == []
    scripts = ("conversion.sh", "slurm_sft.sh", "slurm_peft.sh")
    assert all(os.access(project / f"examples/{slug}/{s}", os.X_OK) for s in scripts)
    # slurm_peft.sh trains the peft recipe and exports the adapter; without HF_MODEL it stops before anything
    peft_script = project / "examples" / slug / "slurm_peft.sh"
    text = peft_script.read_text()
    assert f"--recipe {family}_peft " in text and 'peft export --megatron-path "$SAVE"' in text
    run = subprocess.run(["bash", str(peft_script)], capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert run.returncode == 1 and "set HF_MODEL" in run.stderr, (run.returncode, run.stderr)
    pyproject = (project / "pyproject.toml").read_text()
    assert f'name = "bridge-{family.replace("_", "-")}"' in pyproject
    assert f'{family} = "{module}.plugin"' in pyproject
    assert '"bridge-core[torch]>=1.1,<2"' in pyproject  # typed recipes: contract 1.1
    tox_ini = (project / "tox.ini").read_text()
    assert "{env:BRIDGE_CORE_SPEC:bridge-core[torch]>=1.1,<2}" in tox_ini and "coremin:" in tox_ini
    for script in ("conversion.sh", "inference.sh", "slurm_sft.sh", "slurm_peft.sh"):
        check = subprocess.run(["bash", "-n", str(project / "examples" / slug / script)], capture_output=True)
        assert check.returncode == 0, (script, check.stderr)


# -- the pre-generation hook --------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad,fragment",
    [
        ({"family": "Bad-Name"}, "family 'Bad-Name'"),
        ({"family": "my__model"}, "family 'my__model'"),
        ({"family": "9lives"}, "family '9lives'"),
        ({"family": "core"}, "reserved"),
        ({"family": "class"}, "reserved"),
        ({"architectures": "llama"}, "architecture 'llama' is not a class name"),
        ({"architectures": "FooForCausalLM,FooForCausalLM"}, "lists a class twice"),
        ({"architectures": ""}, "name at least one"),
        ({"model_type": "My Model"}, "model_type 'My Model'"),
        ({"author": " "}, "author must not be empty"),
    ],
)
def test_hook_refuses_bad_names(cookies, capfd, bad, fragment):
    context = {"family": "good", "architectures": "GoodForCausalLM", "model_type": "good", **bad}
    result = cookies.bake(extra_context=context, template=str(TEMPLATE))
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "FailedHookException"
    assert result.project_path is None or not Path(result.project_path).exists()
    assert fragment in capfd.readouterr().err


def test_hook_accepts_good_names_and_derives_the_others(cookies):
    result = cookies.bake(
        extra_context={
            "family": "gpt_oss2",
            "architectures": "GptOss2ForCausalLM, GptOss2Moe",
            "model_type": "gpt-oss",
        },
        template=str(TEMPLATE),
    )
    assert result.exit_code == 0, result.exception
    project = Path(result.project_path)
    assert project.name == "bridge-gpt-oss2"
    assert (project / "src" / "bridge_gpt_oss2" / "modeling_gpt_oss" / "__init__.py").is_file()
    plugin = (project / "src" / "bridge_gpt_oss2" / "plugin.py").read_text()
    assert 'architecture="GptOss2ForCausalLM"' in plugin and 'architecture="GptOss2Moe"' in plugin
    assert "bridge_gpt_oss2.bridge:GptOss2MoeBridge" in plugin


# -- bridgectl new-plugin ------------------------------------------------------------------------
def write_config(folder: Path, config: dict, index: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if index is not None:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    return folder


def test_new_plugin_lists_config_keys_no_bridge_maps(tmp_path):
    config = {**MISTRAL_CONFIG, "attn_logit_softcapping": 30.0, "my_new_block_size": 8, "hidden_act": "gelu"}
    source = write_config(tmp_path / "model", config)
    proc = bridgectl("new-plugin", "--from-config", str(source), "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "config keys no installed bridge maps (2)" in proc.stdout
    assert "  attn_logit_softcapping = 30.0" in proc.stdout and "  my_new_block_size = 8" in proc.stdout
    assert "hidden_act = \"gelu\" (the stock decoder supports 'silu')" in proc.stdout
    assert "num_hidden_layers" not in proc.stdout and "sliding_window" not in proc.stdout
    plugin = tmp_path / "out" / "bridge-mistral"
    assert (plugin / "src" / "bridge_mistral" / "plugin.py").is_file()
    assert 'architecture="MistralForCausalLM"' in (plugin / "src" / "bridge_mistral" / "plugin.py").read_text()
    assert 'model_type="mistral"' in (plugin / "src" / "bridge_mistral" / "plugin.py").read_text()
    assert "quantized" not in proc.stderr


def test_new_plugin_lists_tensors_of_new_blocks(tmp_path):
    config = {**MISTRAL_CONFIG, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "num_hidden_layers": 2}
    source = write_config(tmp_path / "model", config)
    proc = bridgectl("new-plugin", "--from-config", str(source), "--output-dir", str(tmp_path / "out"), "--no-input")
    assert proc.returncode == 0, proc.stderr
    assert "model.layers.*.self_attn.q_norm.weight" in proc.stdout
    assert "model.layers.*.self_attn.k_norm.weight" in proc.stdout


def test_new_plugin_recognises_a_vlm(tmp_path):
    config = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "image_token_id": 151655,
        "text_config": {**{k: v for k, v in MISTRAL_CONFIG.items() if k != "architectures"}, "model_type": "x_text"},
        "vision_config": {"depth": 32, "hidden_size": 1280, "patch_size": 14, "spatial_merge_size": 2},
    }
    source = write_config(tmp_path / "vlm", config)
    proc = bridgectl(
        "new-plugin", "--from-config", str(source / "config.json"), "--output-dir", str(tmp_path), "--no-input"
    )
    assert proc.returncode == 0, proc.stderr
    assert "(model_type qwen2_5_vl, VLM)" in proc.stdout
    assert "vision_config.patch_size = 14" in proc.stdout and "image_token_id = 151655" in proc.stdout
    plugin = tmp_path / "bridge-qwen2-5-vl"
    bridge = (plugin / "src" / "bridge_qwen2_5_vl" / "bridge.py").read_text()
    assert "NOT IMPLEMENTED YET" in bridge and "class Qwen2_5_VLBridge(" in bridge
    assert "vision tower" in bridge and "ConfigError" in bridge
    assert "not implemented yet" in (plugin / "README.md").read_text()


@pytest.mark.parametrize("where", ["quantization_config", "scale_inv_index"])
def test_new_plugin_warns_about_fp8_weights(tmp_path, where):
    config = dict(MISTRAL_CONFIG)
    index = None
    if where == "quantization_config":
        config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
    else:
        index = {
            "model.layers.0.self_attn.q_proj.weight": "model-00001-of-00002.safetensors",
            "model.layers.0.self_attn.q_proj.weight_scale_inv": "model-00001-of-00002.safetensors",
        }
    source = write_config(tmp_path / "fp8", config, index)
    proc = bridgectl("new-plugin", "--from-config", str(source), "--output-dir", str(tmp_path / "out"), "--no-input")
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning: quantized weights")]
    assert len(warning) == 1, proc.stderr
    assert "dequantizes_hf_weights = True" in warning[0]
    if where == "quantization_config":
        assert "quant_method=fp8" in warning[0] and "weight_block_size=[128, 128]" in warning[0]
    else:
        assert "q_proj.weight_scale_inv" in warning[0]
    assert "quantization_config" not in proc.stdout.split("config keys")[-1]


def test_new_plugin_overrides_and_refusals(tmp_path):
    proc = bridgectl(
        "new-plugin", "--family", "Bad-Name", "--architecture", "X", "--output-dir", str(tmp_path), "--no-input"
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "the template refuses these inputs: family 'Bad-Name'" in proc.stderr
    assert list(tmp_path.iterdir()) == []
    args = ("new-plugin", "--family", "ok", "--architecture", "OkForCausalLM", "--model-type", "llama")
    first = bridgectl(*args, "--output-dir", str(tmp_path), "--no-input")
    assert first.returncode == 0, first.stderr
    again = bridgectl(*args, "--output-dir", str(tmp_path), "--no-input")
    assert again.returncode == 2 and "pass --overwrite" in again.stderr
    missing = bridgectl("new-plugin", "--from-config", str(tmp_path / "nowhere"), "--no-input")
    assert missing.returncode == 2 and "no such config file" in missing.stderr


def test_missing_cookiecutter_names_the_extra(monkeypatch, capsys):
    import importlib.util

    from bridge_core.cli.main import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cookiecutter" else real(name, *a)
    )
    assert main(["new-plugin", "--no-input"]) == 2
    err = capsys.readouterr().err
    assert (
        err.strip() == "bridgectl new-plugin: error: cookiecutter is not installed: pip install 'bridge-core[template]'"
    )


def test_installed_core_ships_the_template_unchanged():
    """One source: the wheel's bridge_core/_template is the repository's cookiecutter-plugin/."""
    import bridge_core
    from bridge_core.authoring.scaffold import template_dir

    packaged = Path(bridge_core.__file__).parent / "_template"
    if not packaged.is_dir():
        pytest.skip("bridge-core is installed in editable mode here (the template is read from the checkout)")
    assert template_dir() == packaged
    # a difference here after editing cookiecutter-plugin/ locally: the env holds an older build (tox -r)
    _assert_same_tree(TEMPLATE, packaged)


def _assert_same_tree(a: Path, b: Path) -> None:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    assert cmp.left_only == [] and cmp.right_only == [], (a, cmp.left_only, cmp.right_only)
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    assert mismatch == [] and errors == [], (a, mismatch, errors)
    for sub in cmp.common_dirs:
        _assert_same_tree(a / sub, b / sub)
