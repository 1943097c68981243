"""bridge-deepseek against bridge-core's conformance suite: V3 and V2-Lite toys, every parallel layout.

Toys (``_deepseek_toys``): V3 with q-LoRA, YaRN (mscale_all_dim 1), a dense first layer, 8 experts in 4
groups (top-4 from 2 groups: the groups bind), a shared expert, random expert bias, routed scaling 2.5;
the same with 4 layers saved with stacked experts (PP=2 fits); V2-Lite with a plain q projection and
softmax routing without renormalisation. Layouts (one torchrun launch): TP=2, PP=2 (4-layer and
2-layer toys), EP=2, TP=2 x EP=2 with expert TP=1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _deepseek_toys import V2_TOY, V3_TOY, with_expert_bias
from bridge_core.testing.conformance import BridgeConformance, ToyModel

FUSED_TOYS = {"v3-fused"}


class TestDeepseekConformance(BridgeConformance):
    plugin = "deepseek"
    toys = {
        "v3": ToyModel("DeepseekV3ForCausalLM", V3_TOY, tags=("moe",)),
        "v3-fused": ToyModel("DeepseekV3ForCausalLM", {**V3_TOY, "num_hidden_layers": 4}, seed=1, tags=("moe",)),
        "v2lite": ToyModel("DeepseekV2ForCausalLM", V2_TOY, seed=2, tags=("moe",)),
    }
    parallel = {
        **BridgeConformance.parallel,
        "tp2ep2": {"tp": 2, "ep": 2, "etp": 1, "requires": "moe"},
    }

    @pytest.fixture
    def toy_folders(self, request: Any, tmp_path_factory: Any) -> dict[str, Path]:
        """The suite's toy folders with random expert bias (V3), the fused toy re-saved with stacked experts."""
        from bridge_core.testing.pytest_plugin import session_toy_factory

        factory = session_toy_factory(request.config, tmp_path_factory)
        out = {}
        for name, toy in self.checked_toys().items():
            folder = factory(toy)
            if toy.model_type == "deepseek_v3":
                folder = with_expert_bias(folder, tmp_path_factory.mktemp, fused=name in FUSED_TOYS)
            out[name] = folder
        return out
