"""Entry point of bridge-qwen: declares the contract and registers strings only (no torch)."""

from bridge_core import hookimpl

BRIDGE_CONTRACT = ">=1.0,<2"


@hookimpl
def register_bridges(register):
    register(architecture="Qwen2ForCausalLM", bridge="bridge_qwen.qwen2:Qwen2Bridge", model_type="qwen2")
    register(architecture="Qwen3ForCausalLM", bridge="bridge_qwen.qwen3:Qwen3Bridge", model_type="qwen3")
    register(architecture="Qwen2MoeForCausalLM", bridge="bridge_qwen.qwen2_moe:Qwen2MoeBridge", model_type="qwen2_moe")
    register(architecture="Qwen3MoeForCausalLM", bridge="bridge_qwen.qwen3_moe:Qwen3MoeBridge", model_type="qwen3_moe")
