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
    "GPTOssForCausalLM": "bridge-gpt-oss",
    "NemotronHForCausalLM": "bridge-nemotron",
}
