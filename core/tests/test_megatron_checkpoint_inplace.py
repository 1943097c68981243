"""Loading a torch_dist checkpoint into the model's own parameters (no second copy), and the save layout."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")

from test_megatron_checkpoint import MODEL, params, save  # noqa: E402

from bridge_core.checkpoints import megatron_checkpoint  # noqa: E402
from bridge_core.checkpoints.checkpoint_load import _merge_in_place  # noqa: E402
from bridge_core.checkpoints.megatron_checkpoint import load_megatron_checkpoint, load_weights_into  # noqa: E402
from bridge_core.model.provider import GPTModelProvider  # noqa: E402
from bridge_core.runtime.parallel import destroy_model_parallel  # noqa: E402


@pytest.fixture
def build():
    """``build(seed, **overrides) -> (provider, chunks)`` with random weights (world size 1)."""

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


def storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


@pytest.mark.parametrize(
    "overrides",
    [{}, {"share_embeddings_and_output_weights": True, "params_dtype": torch.bfloat16}],
    ids=["fp32-untied", "bf16-tied"],
)
def test_checkpoint_is_read_into_the_parameters_themselves(build, tmp_path, monkeypatch, overrides):
    provider, chunks = build(seed=0, **overrides)
    info = load_megatron_checkpoint(save(chunks, provider, tmp_path / "ckpt", tmp_path))
    _, fresh = build(seed=1, **info.provider_kwargs())
    before = {name: (p.data_ptr(), storage(p)) for name, p in params(fresh).items()}

    returned = {}
    real_load = megatron_checkpoint.dist_checkpointing.load

    def spy(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        returned.update({k: v for k, v in loaded["model"].items() if isinstance(v, torch.Tensor)})
        return loaded

    cats = []
    real_cat = torch.cat

    def cat(tensors, *args, **kwargs):
        cats.append(len(tensors))
        return real_cat(tensors, *args, **kwargs)

    monkeypatch.setattr(megatron_checkpoint.dist_checkpointing, "load", spy)
    monkeypatch.setattr(torch, "cat", cat)
    load_weights_into(fresh, info)
    monkeypatch.undo()

    after = params(fresh)
    assert all(torch.equal(after[k], v) for k, v in params(chunks).items())  # bit-exact
    assert {name: (p.data_ptr(), storage(p)) for name, p in after.items()} == before
    assert cats == []  # the gate/up halves are not concatenated into a new tensor
    fc1 = "decoder.layers.0.mlp.linear_fc1.weight"
    assert fc1 in returned and set(after) <= set(returned)
    for name, p in after.items():  # what dist-checkpointing returns is the parameters' own memory
        assert returned[name].data_ptr() == p.data_ptr() and storage(returned[name]) == storage(p), name


def test_merge_copies_when_the_pieces_are_not_views_of_the_parameter():
    target = torch.arange(12.0).reshape(4, 3)
    calls = []

    def cat(pieces):
        calls.append(len(pieces))
        return torch.cat(pieces)

    merge = _merge_in_place(cat, target)
    assert merge(list(target.chunk(2))) is target and calls == []
    assert merge({"w": target[:2], "v": target[2:]}) is target
    fresh = [torch.ones(2, 3), torch.zeros(2, 3)]
    assert torch.equal(merge(fresh), torch.cat(fresh)) and calls == [2]  # loaded elsewhere: merged as before
    assert merge(list(target.chunk(2))[:1]) is not target  # does not cover the parameter
    assert merge(list(target.chunk(2))[::-1]) is target  # views tiling it, in any order (merge inverts build)
    assert merge(list(target.chunk(3, dim=1))) is not target  # column pieces are not contiguous spans
    assert merge([target[:2].to(torch.float64), target[2:].to(torch.float64)]) is not target
    assert calls == [2, 1, 3, 2]


def test_each_rank_writes_two_distcp_files(build, tmp_path):
    provider, chunks = build()
    path = save(chunks, provider, tmp_path / "ckpt", tmp_path)
    files = sorted(p.name for p in (path / "iter_0000000").iterdir())
    assert [f for f in files if f.endswith(".distcp")] == ["__0_0.distcp", "__0_1.distcp"]
    assert all((path / "iter_0000000" / f).stat().st_size > 0 for f in files if f.endswith(".distcp"))
