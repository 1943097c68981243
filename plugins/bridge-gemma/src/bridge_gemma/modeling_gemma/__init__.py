"""Gemma's modeling code beyond megatron-core's local layer spec (imports torch and megatron-core).

``norm``: the zero-centred RMSNorm (HF: fp32, ``x * (1 + w)``, cast back) and a row-parallel linear
with a norm on its output (Gemma 2/3's sandwich norms). ``attention``: Gemma 3's two RoPE bases.
``provider``: ``GemmaModelProvider``, which
builds the layer spec with them, scales the embeddings by sqrt(hidden) and soft-caps the logits.
"""
