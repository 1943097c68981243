"""Megatron-LM torch_dist checkpoints: layout, bit-exact round trips, resharding, refusals."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")

import torch.nn.functional as F  # noqa: E402
from megatron.core import dist_checkpointing  # noqa: E402
from megatron.core.dist_checkpointing.strategies import common as mcore_common  # noqa: E402

from bridge_core.checkpoints.checkpoint_load import read_common_state  # noqa: E402
from bridge_core.checkpoints.megatron_checkpoint import (  # noqa: E402
    load_megatron_checkpoint,
    load_weights_into,
    provider_kwargs_from_run_config,
    save_megatron_checkpoint,
)
from bridge_core.errors import CheckpointError  # noqa: E402
from bridge_core.model.provider import GPTModelProvider  # noqa: E402
from bridge_core.runtime.parallel import destroy_model_parallel  # noqa: E402

# megatron-core before 0.17 writes the common state to common.pt; later ones inside the .distcp files
COMMON_PT = ["common.pt"] if hasattr(mcore_common, "TorchCommonLoadStrategy") else []

MODEL = dict(
    num_layers=2,
    hidden_size=64,
    num_attention_heads=4,
    num_query_groups=2,
    ffn_hidden_size=96,
    vocab_size=300,
    normalization="RMSNorm",
    gated_linear_unit=True,
    activation_func=F.silu,
    add_bias_linear=False,
    transformer_layer_spec="local",
)


class Evil:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def build():
    """``build(seed, **overrides) -> (provider, chunks)`` in this process (world size 1)."""

    def _build(seed: int = 0, **overrides):
        provider = GPTModelProvider(**{**MODEL, **overrides})
        chunks = provider.provide_distributed_model()
        torch.manual_seed(seed)
        with torch.no_grad():
            for param in chunks[0].parameters():
                param.normal_()
        return provider, chunks

    yield _build
    destroy_model_parallel()


def save(chunks, provider, path, tmp_path, **kwargs):
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text('{"model": {}}')
    kwargs.setdefault("tokenizer_files", [tokenizer])
    return save_megatron_checkpoint(
        chunks, provider, path, run_config={"source": "toy"}, provenance={"hf_path": "toy", "sha": "0"}, **kwargs
    )


def params(chunks) -> dict:
    return dict(chunks[0].named_parameters())


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.fixture
def saved(build, tmp_path):
    provider, chunks = build()
    path = save(chunks, provider, tmp_path / "ckpt", tmp_path)
    return provider, chunks, path


# -- layout and round trip ----------------------------------------------------------------------


def test_layout(saved, tmp_path):
    provider, _, path = saved
    siblings = sorted(p.name for p in path.parent.iterdir())
    assert siblings == ["ckpt", "tokenizer.json"]  # no temporary folder left behind
    assert sorted(p.name for p in path.iterdir()) == [
        "iter_0000000",
        "latest_checkpointed_iteration.txt",
        "provenance.json",
        "run_config.json",
        "tokenizer",
    ]
    assert (path / "latest_checkpointed_iteration.txt").read_text() == "0"
    files = {p.name for p in (path / "iter_0000000").iterdir()}
    assert {".metadata", "metadata.json", *COMMON_PT} <= files and any(f.endswith(".distcp") for f in files)
    assert (path / "tokenizer" / "tokenizer.json").read_text() == '{"model": {}}'
    assert json.loads((path / "provenance.json").read_text()) == {"hf_path": "toy", "sha": "0"}

    run_config = json.loads((path / "run_config.json").read_text())  # plain JSON
    settings = run_config["provider"]
    assert run_config["run"] == {"source": "toy"}
    assert settings["activation_func"] == "silu" and settings["params_dtype"] == "torch.float32"
    assert settings["padded_vocab_size"] == 384 and settings["num_query_groups"] == 2
    assert "init_method" in run_config["omitted_provider_fields"]

    # megatron-core's own reader (common.pt before 0.17, the common_state object after), and ours
    common = dist_checkpointing.load_common_state_dict(str(path / "iter_0000000"))
    assert read_common_state(path / "iter_0000000") == common
    if COMMON_PT:  # Megatron-LM loads it with weights_only=True
        assert torch.load(path / "iter_0000000" / "common.pt", weights_only=True) == common
    assert common["checkpoint_version"] == 3.0 and common["iteration"] == 0
    args = common["args"]
    expected = dict(
        num_layers=2,
        hidden_size=64,
        ffn_hidden_size=96,
        num_attention_heads=4,
        group_query_attention=True,
        num_query_groups=2,
        kv_channels=16,
        padded_vocab_size=384,
        position_embedding_type="rope",
        add_position_embedding=False,
        normalization="RMSNorm",
        swiglu=True,
        untie_embeddings_and_output_weights=True,
        tensor_model_parallel_size=1,
        pipeline_model_parallel_size=1,
        num_experts=None,
        params_dtype=torch.float32,
        bf16=False,
        no_save_optim=True,
        no_save_rng=True,
        ckpt_format="torch_dist",
        tokenizer_type="HuggingFaceTokenizer",
    )
    assert {k: getattr(args, k) for k in expected} == expected


@pytest.mark.parametrize(
    "overrides",
    [{}, {"share_embeddings_and_output_weights": True, "params_dtype": torch.bfloat16}],
    ids=["fp32-untied", "bf16-tied"],
)
def test_round_trip_is_bit_exact(build, tmp_path, overrides):
    provider, chunks = build(seed=0, **overrides)
    path = save(chunks, provider, tmp_path / "ckpt", tmp_path)
    info = load_megatron_checkpoint(path)
    assert info.iteration == 0 and info.tokenizer_dir == path / "tokenizer"
    _, fresh = build(seed=1, **info.provider_kwargs())
    assert any(not torch.equal(a, b) for a, b in zip(params(chunks).values(), params(fresh).values()))
    load_weights_into(fresh, info)
    before, after = params(chunks), params(fresh)
    assert before.keys() == after.keys()
    assert all(after[k].dtype == before[k].dtype and torch.equal(after[k], before[k]) for k in before)


def test_provider_rebuilt_from_run_config_alone(saved):
    provider, _, path = saved
    run_config = json.loads((path / "run_config.json").read_text())
    rebuilt = GPTModelProvider(**provider_kwargs_from_run_config(run_config)).finalize()
    assert rebuilt.activation_func is F.silu and rebuilt.params_dtype is torch.float32
    skip = {"init_method", "output_layer_init_method", "embedding_init_method", "padded_vocab_size"}
    diff = [
        f.name
        for f in dataclasses.fields(provider)
        if f.name not in skip and getattr(provider, f.name) != getattr(rebuilt, f.name)
    ]
    assert diff == []
    assert rebuilt.vocab_size_with_padding == provider.vocab_size_with_padding


def test_unknown_activation_is_refused():
    with pytest.raises(CheckpointError) as err:
        provider_kwargs_from_run_config({"provider": {"activation_func": "mymodule.swish"}})
    assert one_line(err).startswith("run_config.json: activation_func 'mymodule.swish' cannot be restored")


@pytest.mark.slow
def test_resharding_across_tp_pp_vp(tmp_path):
    """TP=1 -> TP=2, PP=2, PP=2 x VP=2; TP=2 -> TP=1; VP -> TP=1 (one torchrun launch, 2 processes)."""
    from bridge_core.testing.launch import torchrun

    script = Path(__file__).with_name("_ckpt_dist_script.py")
    proc = torchrun([str(script), str(tmp_path)], nproc=2, timeout=300)
    results_file = tmp_path / "results.json"
    assert results_file.exists(), f"torchrun exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    results = json.loads(results_file.read_text())
    assert list(results) == ["save_tp1", "tp2_from_tp1", "pp2_from_tp1", "vp2_from_tp1", "tp1_from_tp2", "tp1_from_vp2"]
    for step, result in results.items():
        assert result == {"error": None, "mismatch": [], "missing": []}, step


# -- refusals -----------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError) as err:
        load_megatron_checkpoint(tmp_path / "nope")
    assert one_line(err) == f"{tmp_path / 'nope'}: Megatron checkpoint folder does not exist"


def test_missing_tracker(saved):
    _, _, path = saved
    (path / "latest_checkpointed_iteration.txt").unlink()
    with pytest.raises(CheckpointError) as err:
        load_megatron_checkpoint(path)
    tracker = path / "latest_checkpointed_iteration.txt"
    assert one_line(err) == f"{tracker}: missing; {path} is not a Megatron-LM checkpoint folder"


def test_tracker_names_a_missing_iteration(saved):
    _, _, path = saved
    (path / "latest_checkpointed_iteration.txt").write_text("1000\n")
    with pytest.raises(CheckpointError) as err:
        load_megatron_checkpoint(path)
    tracker = path / "latest_checkpointed_iteration.txt"
    assert one_line(err) == f"{path / 'iter_0001000'}: missing, but {tracker} names it"


def test_missing_run_config(saved):
    _, _, path = saved
    (path / "run_config.json").unlink()
    with pytest.raises(CheckpointError) as err:
        load_megatron_checkpoint(path)
    assert one_line(err) == f"{path / 'run_config.json'}: missing; it holds the settings needed to rebuild the model"


def test_malicious_metadata_pickle_is_refused(saved, tmp_path):
    _, chunks, path = saved
    marker = tmp_path / "pwned"
    metadata = path / "iter_0000000" / ".metadata"
    metadata.write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(CheckpointError) as err:
        load_weights_into(chunks, path)
    assert one_line(err) == f"{metadata}: refused to unpickle: refused global {os.system.__module__}.system"
    assert not marker.exists()


def test_malicious_stored_object_is_refused(build, tmp_path):
    provider, chunks = build()
    marker = tmp_path / "pwned"
    chunks[0].decoder.layers[0].self_attention.linear_proj.get_extra_state = lambda: Evil(marker)
    path = save(chunks, provider, tmp_path / "ckpt", tmp_path)
    _, fresh = build(seed=1)
    with pytest.raises(CheckpointError) as err:
        load_weights_into(fresh, path)
    message = one_line(err)
    assert message.startswith(f"{path / 'iter_0000000'}: cannot load the weights into this model: UnpicklingError")
    assert not marker.exists()


def test_malicious_common_state_is_refused(build, tmp_path, monkeypatch):
    """The common state (common.pt, or the common_state object of megatron-core 0.17+) is weights-only."""
    import bridge_core.checkpoints.megatron_checkpoint as saver

    provider, chunks = build()
    marker = tmp_path / "pwned"
    monkeypatch.setattr(saver, "megatron_args", lambda *args, **kwargs: Evil(marker))
    path = save(chunks, provider, tmp_path / "ckpt", tmp_path)
    _, fresh = build(seed=1)
    with pytest.raises(CheckpointError) as err:
        load_weights_into(fresh, path)
    message = one_line(err)
    assert message.startswith(str(path / "iter_0000000")) and "UnpicklingError" in message, message
    assert not marker.exists()


def test_model_with_too_few_vocabulary_rows_is_refused(saved, build):
    _, _, path = saved
    info = load_megatron_checkpoint(path)
    _, small = build(**{**info.provider_kwargs(), "padded_vocab_size": 256})
    with pytest.raises(CheckpointError) as err:
        load_weights_into(small, info)
    assert one_line(err) == (
        f"{path / 'run_config.json'}: the checkpoint has 300 tokens but the model only 256 vocabulary rows; "
        "build it with padded_vocab_size=384 (provider_kwargs_from_run_config)"
    )


def test_existing_folder_needs_overwrite(saved, tmp_path):
    provider, chunks, path = saved
    with pytest.raises(CheckpointError) as err:
        save(chunks, provider, path, tmp_path)
    assert one_line(err) == (
        f"{path}: Megatron checkpoint folder exists and is not empty; pass --overwrite (overwrite=True) to replace it"
    )
    (path / "provenance.json").write_text("{}")
    save(chunks, provider, path, tmp_path, overwrite=True)
    assert json.loads((path / "provenance.json").read_text())["hf_path"] == "toy"


def test_missing_tokenizer_file_writes_nothing(build, tmp_path):
    provider, chunks = build()
    with pytest.raises(CheckpointError) as err:
        save(chunks, provider, tmp_path / "ckpt", tmp_path, tokenizer_files=[tmp_path / "vocab.json"])
    assert one_line(err) == f"{tmp_path / 'vocab.json'}: tokenizer file does not exist"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]


@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_save_leaves_no_folder(build, tmp_path, monkeypatch, existing):
    provider, chunks = build()
    path = tmp_path / "ckpt"
    if existing:
        save(chunks, provider, path, tmp_path)
        old = (path / "run_config.json").read_text()

    def interrupt(*args, **kwargs):  # after the shards are written, while copying the tokenizer
        raise KeyboardInterrupt

    monkeypatch.setattr("bridge_core.checkpoints.megatron_checkpoint.shutil.copy2", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save(chunks, provider, path, tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        ["ckpt", "tokenizer.json"] if existing else ["tokenizer.json"]
    )
    if existing:
        assert (path / "run_config.json").read_text() == old
        load_megatron_checkpoint(path)
