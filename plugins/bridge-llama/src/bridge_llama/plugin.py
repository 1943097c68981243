"""Entry point of bridge-llama: declares the contract and registers strings only (no torch)."""

from bridge_core import hookimpl

BRIDGE_CONTRACT = ">=1.0,<2"


@hookimpl
def register_bridges(register):
    register(architecture="LlamaForCausalLM", bridge="bridge_llama.bridge:LlamaBridge", model_type="llama")
    register(architecture="MistralForCausalLM", bridge="bridge_llama.bridge:MistralBridge", model_type="mistral")
