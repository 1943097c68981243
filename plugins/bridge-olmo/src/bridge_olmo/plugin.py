"""Entry point of bridge-olmo: declares the contract and registers strings only.

bridge-core imports this module during discovery, in every process, before any model is used:
keep it tiny and never import torch, megatron or transformers here (the conformance tests check).
"""

from bridge_core import hookimpl

BRIDGE_CONTRACT = ">=1.1,<2"


@hookimpl
def register_bridges(register):
    register(architecture="Olmo2ForCausalLM", bridge="bridge_olmo.olmo2:Olmo2Bridge", model_type="olmo2")
    register(architecture="OlmoeForCausalLM", bridge="bridge_olmo.olmoe:OlmoeBridge", model_type="olmoe")
