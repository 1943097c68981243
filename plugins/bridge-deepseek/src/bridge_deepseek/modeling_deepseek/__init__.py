"""DeepSeek modeling code beyond megatron-core's stock local layer (imports torch and megatron-core).

``attention``: the local core attention MLA can build on (value heads narrower than query heads), and
the MLA self-attention that keeps DeepSeek's standalone q/kv norms under megatron-core 0.19.
``router``: the top-k router whose ``expert_bias`` is a (frozen) parameter, so that it converts.
``specs``: the decoder block and MTP block specs of DeepSeek-V2/V3 on local modules.
"""
