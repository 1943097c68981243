"""``mcore_versions.mlp_submodules`` on the installed megatron-core's own layer specs (0.16.1 and 0.19.2)."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("megatron.core")

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.mlp import MLPSubmodules

from bridge_core.model.mcore_versions import mlp_submodules


def test_mlp_submodules_of_the_local_spec_are_editable_in_place():
    layer = copy.deepcopy(get_gpt_layer_local_spec(normalization="RMSNorm"))
    subs = mlp_submodules(layer.submodules.mlp)
    assert isinstance(subs, MLPSubmodules)

    class Marker:
        pass

    subs.linear_fc2 = Marker
    assert mlp_submodules(layer.submodules.mlp).linear_fc2 is Marker
    # the deep copy is edited, not megatron-core's spec
    assert mlp_submodules(get_gpt_layer_local_spec(normalization="RMSNorm").submodules.mlp).linear_fc2 is not Marker


def test_mlp_submodules_of_something_else_is_a_one_line_error():
    with pytest.raises(TypeError, match="cannot find the MLP submodules"):
        mlp_submodules(object())
