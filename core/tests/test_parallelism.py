"""One class of parallel sizes (``Parallelism``, also named ``ParallelSizes``) and one rank helper."""

from __future__ import annotations

import itertools
import subprocess
import sys
from types import SimpleNamespace

import pytest

from bridge_core.errors import ConfigError
from bridge_core.runtime.parallelism import Parallelism, ParallelSizes, rank, world_size


def test_both_names_are_one_class_wherever_they_are_imported():
    pytest.importorskip("torch")
    from bridge_core.runtime import parallel

    assert ParallelSizes is Parallelism is parallel.ParallelSizes
    assert parallel.rank is rank and parallel.world_size is world_size
    assert ParallelSizes(tp=2, vp=3) == Parallelism(tp=2, vp=3)


def test_positional_sizes_keep_the_command_lines_order():
    assert Parallelism(2, 3, 4, 1) == Parallelism(tp=2, pp=3, ep=4, etp=1)
    with pytest.raises(TypeError):
        Parallelism(1, 1, 1, None, 2)  # vp is keyword-only


@pytest.mark.parametrize("tp,pp,ep,etp", list(itertools.product((1, 2, 3, 4), (1, 2), (1, 2, 4, 8), (None, 1, 2))))
def test_world_size_is_the_smallest_world_check_world_accepts(tp, pp, ep, etp):
    sizes = Parallelism(tp=tp, pp=pp, ep=ep, etp=etp)
    sizes.check_world(sizes.world_size)
    sizes.check_world(2 * sizes.world_size)
    for smaller in range(1, sizes.world_size):
        with pytest.raises(ConfigError, match=rf"world size {smaller} "):
            sizes.check_world(smaller)


def test_apply_sets_the_sizes_and_vp_only_when_given():
    provider = SimpleNamespace(virtual_pipeline_model_parallel_size=7)
    assert Parallelism(tp=2, pp=3, ep=4).apply(provider) is provider
    assert (provider.tensor_model_parallel_size, provider.pipeline_model_parallel_size) == (2, 3)
    assert (provider.expert_model_parallel_size, provider.expert_tensor_parallel_size) == (4, None)
    assert provider.virtual_pipeline_model_parallel_size == 7
    Parallelism(pp=2, vp=2).apply(provider)
    assert provider.virtual_pipeline_model_parallel_size == 2


def test_rank_and_world_size_follow_torchrun_before_any_group(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (rank(), world_size()) == (3, 4)


def test_the_rank_helper_imports_no_torch():
    code = (
        "import sys\nfrom bridge_core.runtime.parallelism import rank, world_size\n"
        "from bridge_core.progress import is_rank0\n"
        "print(rank(), world_size(), is_rank0(), 'torch' in sys.modules)"
    )
    env = {"PATH": "/usr/bin:/bin", "RANK": "1", "WORLD_SIZE": "2"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert proc.stdout.split() == ["1", "2", "False", "False"]


def test_the_old_re_export_in_workflows_warns():
    pytest.importorskip("torch")
    from bridge_core.conversion import workflows

    with pytest.warns(DeprecationWarning, match=r"workflows\.Parallelism moved to bridge_core\.runtime\.parallelism"):
        assert workflows.Parallelism is Parallelism
    assert "Parallelism" not in workflows.__all__
    with pytest.raises(AttributeError, match="no_such_name"):
        workflows.no_such_name  # noqa: B018
