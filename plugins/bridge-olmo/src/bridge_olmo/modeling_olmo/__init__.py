"""OLMo modeling code beyond megatron-core's stock local layer (imports torch and megatron-core).

``norms``: HF's RMSNorm and the full-width QK-norm (one norm over all heads, exact under tensor
parallelism). ``attention``: ``FullWidthQKSelfAttention``, a ``SelfAttention`` whose q/k norms span the
whole projection. ``layers``: ``PostNormRowParallelLinear``, a row-parallel linear followed by a norm
(OLMo-2's post-norms). ``specs``: the layer specs of OLMo-2 and OLMoE.
"""
