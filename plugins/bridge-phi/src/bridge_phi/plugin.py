"""Entry point of bridge-phi: declares the contract and registers strings only.

bridge-core imports this module during discovery, in every process, before any model is used:
keep it tiny and never import torch, megatron or transformers here (the conformance tests check).
"""

from bridge_core import hookimpl

BRIDGE_CONTRACT = ">=1.1,<2"


@hookimpl
def register_bridges(register):
    register(architecture="Phi3ForCausalLM", bridge="bridge_phi.bridge:Phi3Bridge", model_type="phi3")


@hookimpl
def register_flops(register):
    register(block="phi_decoder_layer", function="bridge_phi.flops:decoder_layer_flops")
