"""HF architectures this project's plugins serve, and those no published plugin serves yet.

Used only to make "not supported" errors actionable; it never decides anything else. Only
distributions whose source is in this repository (``plugins/bridge-<family>/``) are named: a name
nobody publishes would send users to whatever someone else registers under it.
"""

from __future__ import annotations

# Distributions whose source is in the bridge repository. None is on PyPI yet: they install from a
# wheelhouse built in a checkout.
SHIPPED: frozenset[str] = frozenset(
    {
        "bridge-llama",
        "bridge-qwen",
        "bridge-phi",
        "bridge-mixtral",
        "bridge-gemma",
        "bridge-olmo",
        "bridge-deepseek",
        "bridge-gpt-oss",
    }
)

KNOWN_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "bridge-llama",
    "MistralForCausalLM": "bridge-llama",
    "Qwen2ForCausalLM": "bridge-qwen",
    "Qwen3ForCausalLM": "bridge-qwen",
    "Qwen3MoeForCausalLM": "bridge-qwen",
    "Qwen2MoeForCausalLM": "bridge-qwen",
    "GemmaForCausalLM": "bridge-gemma",
    "Gemma2ForCausalLM": "bridge-gemma",
    "Gemma3ForCausalLM": "bridge-gemma",
    "MixtralForCausalLM": "bridge-mixtral",
    "Phi3ForCausalLM": "bridge-phi",
    "Olmo2ForCausalLM": "bridge-olmo",
    "OlmoeForCausalLM": "bridge-olmo",
    "DeepseekV2ForCausalLM": "bridge-deepseek",
    "DeepseekV3ForCausalLM": "bridge-deepseek",
    "GptOssForCausalLM": "bridge-gpt-oss",
}

# Popular architectures no plugin of this project serves yet.
NOT_PUBLISHED: frozenset[str] = frozenset(
    {
        "Qwen2_5_VLForConditionalGeneration",
        "NemotronHForCausalLM",
    }
)


def install_hint(distribution: str) -> str:
    """How to get ``distribution`` (one of ``SHIPPED``): from a wheelhouse, as none is on PyPI yet."""
    return (
        f"pip install --find-links dist {distribution} (not on PyPI yet: build dist/ in a bridge "
        "checkout with python scripts/build_dists.py)"
    )


def not_published_hint(architecture: str) -> str:
    """What to do about a known architecture no published plugin serves."""
    return f"{architecture}: no plugin for it is published yet (write one with 'bridgectl new-plugin')"
