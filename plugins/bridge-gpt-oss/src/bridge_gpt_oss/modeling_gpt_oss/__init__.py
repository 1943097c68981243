"""GPT-OSS modeling code beyond megatron-core's local spec: a core attention with learned sinks.

Imports torch and megatron-core: imported by the bridge only, never by ``plugin.py``.
"""
