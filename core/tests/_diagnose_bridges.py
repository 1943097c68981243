"""A test plugin for ``test_diagnose``: the stock decoder, and one with a deliberately broken hook."""

from __future__ import annotations

from bridge_core import hookimpl
from bridge_core.model.decoder import DecoderBridge

BRIDGE_CONTRACT = ">=1.0,<2"
BROKEN_TENSOR = "model.layers.1.post_attention_layernorm.weight"


@hookimpl
def register_bridges(register):
    register(architecture="LlamaForCausalLM", bridge="_diagnose_bridges:DecoderBridge", model_type="llama")
    register(architecture="MistralForCausalLM", bridge="_diagnose_bridges:ScaledNormBridge", model_type="mistral")


class ScaledNormBridge(DecoderBridge):
    """Loads layer 1's pre-MLP norm scaled by 1.5 (as a wrong norm offset in a new family would)."""

    SUPPORTED_HF_CONFIG = {**DecoderBridge.SUPPORTED_HF_CONFIG, "sliding_window": None}  # no window

    def maybe_modify_loaded_hf_weight(self, hf_param, hf_state_dict):
        tensor = super().maybe_modify_loaded_hf_weight(hf_param, hf_state_dict)
        return tensor * 1.5 if hf_param == BROKEN_TENSOR else tensor
