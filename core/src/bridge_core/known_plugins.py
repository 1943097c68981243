"""Well-known HF architectures and the plugin distribution that provides each.

Used only to make "not supported" errors actionable; it never decides anything else.
"""

from __future__ import annotations

KNOWN_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "bridge-llama",
    "MistralForCausalLM": "bridge-llama",
    "Qwen2ForCausalLM": "bridge-qwen",
    "Qwen3ForCausalLM": "bridge-qwen",
    "Qwen3MoeForCausalLM": "bridge-qwen",
    "Qwen2MoeForCausalLM": "bridge-qwen",
    "Qwen2_5_VLForConditionalGeneration": "bridge-qwen-vl",
    "GemmaForCausalLM": "bridge-gemma",
    "Gemma2ForCausalLM": "bridge-gemma",
    "Gemma3ForCausalLM": "bridge-gemma",
    "DeepseekV2ForCausalLM": "bridge-deepseek",
    "DeepseekV3ForCausalLM": "bridge-deepseek",
    "MixtralForCausalLM": "bridge-mixtral",
    "Phi3ForCausalLM": "bridge-phi",
    "Olmo2ForCausalLM": "bridge-olmo",
    "OlmoeForCausalLM": "bridge-olmo",
    "GptOssForCausalLM": "bridge-gpt-oss",
    "NemotronHForCausalLM": "bridge-nemotron",
}

# Distributions whose source is in the bridge repository (plugins/bridge-<family>/). None is on PyPI
# yet: they install from a wheelhouse built in a checkout. The other names above are not published.
SHIPPED: frozenset[str] = frozenset(
    {"bridge-llama", "bridge-qwen", "bridge-phi", "bridge-mixtral", "bridge-gemma", "bridge-olmo"}
)


def install_hint(distribution: str) -> str:
    """How to get ``distribution``, without sending anyone to a PyPI name nobody has published."""
    if distribution in SHIPPED:
        return (
            f"pip install --find-links dist {distribution} (not on PyPI yet: build dist/ in a bridge "
            "checkout with python scripts/build_dists.py)"
        )
    return f"{distribution} is not published yet (write it with 'bridgectl new-plugin')"
