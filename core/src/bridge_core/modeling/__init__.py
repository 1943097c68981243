"""Modeling code shared by families: megatron-core modules beyond the stock local layer spec.

``attention``: ``SDPACoreAttention``, a core attention over ``torch.nn.functional.scaled_dot_product_attention``
with exact sliding windows (and the hooks later families use for soft-capping or sinks). ``specs``: how
a bridge installs it into a layer spec, and a provider that does so where the local spec would be wrong.
Its modules import torch and megatron-core: never import them from an entry-point module.
"""
