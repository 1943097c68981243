"""The command line as a newcomer meets it: help with defaults, Hub IDs, tokenizer checks, timed
summaries with named units, Megatron-Bridge's spellings, and ``bridgectl diagnose``."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bridge_core.cli.help_format import DefaultsHelpFormatter
from bridge_core.cli.main import COMMANDS
from bridge_core.testing.toy import ToyModel, build_toy

LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 96,
    "vocab_size": 300,
    "max_position_embeddings": 128,
}


def bridgectl(*args: str, **env: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "bridgectl"
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "HF_"))},
        "BRIDGE_PLUGINS": "llama",
        "OMP_NUM_THREADS": "1",
        **env,
    }
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600, env=environ)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """A Llama toy without tokenizer files."""
    return build_toy(ToyModel("LlamaForCausalLM", LLAMA), tmp_path_factory.mktemp("toy") / "hf")


def command_parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"bridgectl {name}", formatter_class=DefaultsHelpFormatter)
    importlib.import_module(COMMANDS[name][0]).add_arguments(parser)
    return parser


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_and_shows_its_default(name):
    parser = command_parser(name)
    help_text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"bridgectl {name} {action.option_strings[0]} has no help text"
        if action.default not in (None, False):
            # the formatter appends "(default: X)"; a help text may name its default in words instead
            shown = f"(default: {action.default})" in help_text or "default" in action.help
            assert shown, f"bridgectl {name} {action.option_strings[0]}: default {action.default!r} not in --help"


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("import", ["--tp TP tensor model parallel size (default: 1)", "(default: 1)", "--pp PP"]),
        ("verify", ["(default: 0.0001)"]),
        ("generate", ["tokens to generate (default: 32)", "--no-progress"]),
        ("export", ["(default: 5GB)", "--trust-remote-code"]),
    ],
)
def test_help_shows_defaults_as_printed_by_bridgectl(command, shown):
    proc = bridgectl(command, "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for fragment in shown:
        assert fragment in text, text


def test_generate_accepts_megatron_bridge_spellings():
    args = command_parser("generate").parse_args(
        ["--hf_model_path", "hf", "--megatron_model_path", "ckpt", "--max_new_tokens", "5", "--prompt", "x"]
    )
    assert (args.hf_model, args.megatron_path, args.max_new_tokens) == ("hf", "ckpt", 5)
    assert (
        command_parser("export")
        .parse_args(["--megatron-path", "c", "--hf-path", "o", "--trust-remote-code"])
        .trust_remote_code
    )


def test_a_hub_id_offline_is_one_line_saying_how_to_download(tmp_path):
    out = tmp_path / "ckpt"
    proc = bridgectl(
        "import", "--hf-model", "no-such-org/no-such-model", "--megatron-path", str(out), HF_HUB_OFFLINE="1"
    )
    line = one_line_error(proc)
    assert line.startswith("bridgectl import: error: --hf-model no-such-org/no-such-model: no such local path")
    assert "HF_HUB_OFFLINE" in line
    assert "huggingface-cli download no-such-org/no-such-model --local-dir DIR" in line
    assert not out.exists()


def test_a_missing_path_that_is_no_hub_id_is_still_named(tmp_path):
    line = one_line_error(bridgectl("import", "--hf-model", str(tmp_path / "nope"), "--megatron-path", "x"))
    assert f"{tmp_path / 'nope'}: no such file or folder" in line


def test_a_failing_import_keeps_stderr_to_its_one_line_error(toy, tmp_path):
    broken = tmp_path / "hf"
    broken.mkdir()
    for f in toy.iterdir():
        (broken / f.name).write_bytes(b"not json" if f.name.endswith(".safetensors") else f.read_bytes())
    proc = bridgectl("import", "--hf-model", str(broken), "--megatron-path", str(tmp_path / "out"))
    assert "corrupt safetensors file" in one_line_error(proc)
    assert "import: planning the Megatron checkpoint" in proc.stdout  # the stages it went through


def test_generate_without_a_tokenizer_refuses_before_building(toy):
    line = one_line_error(bridgectl("generate", "--hf-model", str(toy), "--prompt", "Hello"))
    assert f"{toy}: no tokenizer" in line and "--hf-model" in line


@pytest.fixture(scope="module")
def imported(toy, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    path = tmp_path_factory.mktemp("ckpt") / "megatron"
    argv = ("import", "--hf-model", str(toy), "--megatron-path", str(path), "--tp", "2", "--workers", "2")
    return path, bridgectl(*argv)


def test_import_warns_without_a_tokenizer_and_generate_refuses_the_checkpoint(imported, toy):
    path, proc = imported
    assert proc.returncode == 0, proc.stderr
    assert f"bridgectl import: warning: {toy} has no tokenizer" in proc.stderr
    line = one_line_error(bridgectl("generate", "--megatron-path", str(path), "--prompt", "Hi"))
    assert "no tokenizer" in line and "give one with --hf-model" in line


IMPORT_PARTS = ("loading libraries", "planning", "converting", "writing")


def test_import_summary_names_units_totals_and_the_parts_of_the_wall_time(imported):
    _, proc = imported
    out = proc.stdout
    # 2 layers x 9 tensors + embedding + final norm + lm_head = 21 HF tensors; 2 x 6 + 3 Megatron
    # parameters, whole: the streaming import builds no model at the layout.
    assert re.search(
        r"import: read 21 HF tensors \(0\.\d\d GB\) into 15 Megatron parameters \(0\.\d\d GB\), streamed", out
    )
    total = re.search(r"import: wrote .*; total (\d+\.\d) s \((.*)\)", out)
    assert total, out
    parts = dict(re.findall(r"([a-z][a-z -]+?) (\d+\.\d) s", total.group(2)))
    # Parts under 0.05 s are left out of the summary: writing this toy can be one of them, and so can
    # the user's process start-up (0.04 s here: no torch before the ranks start). Importing torch is not.
    assert "loading libraries" in parts and set(parts) <= {"start-up", "rank start-up", *IMPORT_PARTS}, parts
    assert sum(float(v) for v in parts.values()) <= float(total.group(1)) + 0.5
    assert "import: planning the Megatron checkpoint" in out  # stage lines on stdout (a log: no bars)
    assert "\r" not in out
    assert proc.stderr.strip().splitlines()[0].startswith("bridgectl import: warning:")  # stderr: warnings, errors


def test_no_progress_keeps_only_the_summaries(imported, toy, tmp_path):
    path, _ = imported
    proc = bridgectl("export", "--megatron-path", str(path), "--hf-path", str(tmp_path / "out"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and "export: loading" not in proc.stdout and "export: writing (" not in proc.stdout
    assert re.search(r"export: wrote 21 HF tensors \(0\.\d\d GB\) from 15 Megatron parameters", proc.stdout)
    assert re.search(r"export: total \d+\.\d s \(start-up .*planning", proc.stdout)


def test_diagnose_on_a_correct_toy_finds_no_divergence(toy):
    proc = bridgectl("diagnose", "--hf-model", str(toy), "--no-progress")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "layer 1 pre-MLP norm" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("diagnose: no divergence")
