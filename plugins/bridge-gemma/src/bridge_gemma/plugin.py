"""Entry point of bridge-gemma: declares the contract and registers strings only.

bridge-core imports this module during discovery, in every process, before any model is used:
keep it tiny and never import torch, megatron or transformers here (the conformance tests check).
"""

from bridge_core import hookimpl

BRIDGE_CONTRACT = ">=1.1,<2"


@hookimpl
def register_bridges(register):
    register(architecture="GemmaForCausalLM", bridge="bridge_gemma.bridge:GemmaBridge", model_type="gemma")
    register(architecture="Gemma2ForCausalLM", bridge="bridge_gemma.bridge:Gemma2Bridge", model_type="gemma2")
    register(architecture="Gemma3ForCausalLM", bridge="bridge_gemma.bridge:Gemma3Bridge", model_type="gemma3_text")
