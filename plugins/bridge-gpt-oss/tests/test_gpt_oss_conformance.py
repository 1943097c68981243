"""bridge-gpt-oss against bridge-core's conformance suite, every parallel layout in one torchrun launch.

The toy binds every feature: 4 experts top-2 with random router and expert biases, random O(1) sinks,
YaRN (factor 4), a window of 8 tokens (shorter than the 64-token sequence) on alternate layers from
``layer_types``, attention biases, and expert weights scaled so that the ``swiglu_limit`` clamp binds
(``gpt_oss_toys``). Layouts: TP=2 (experts at expert TP 1, megatron-core's only choice with biases),
PP=2, EP=2, TP=2 x EP=2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from bridge_core.testing.conformance import BridgeConformance, ToyModel
from gpt_oss_toys import GPT_OSS, randomised_copy


class TestGptOssConformance(BridgeConformance):
    plugin = "gpt_oss"
    toys: ClassVar[dict[str, ToyModel]] = {"gpt-oss": ToyModel("GptOssForCausalLM", GPT_OSS, tags=("moe",))}
    parallel: ClassVar[dict[str, dict[str, Any]]] = {
        "tp2": {"tp": 2, "etp": 1},
        "pp2": {"pp": 2, "load_weights": True},
        "ep2": {"ep": 2, "etp": 1, "requires": "moe"},
        "tp2ep2": {"tp": 2, "ep": 2, "etp": 1, "requires": "moe"},
    }

    @pytest.fixture
    def toy_folders(self, request: Any, tmp_path_factory: Any) -> dict[str, Path]:
        """The suite's toy folders, re-saved with random sinks and biases and a binding clamp."""
        from bridge_core.testing.pytest_plugin import session_toy_factory

        factory = session_toy_factory(request.config, tmp_path_factory)
        return {n: randomised_copy(factory(t), tmp_path_factory.mktemp) for n, t in self.checked_toys().items()}
