"""Custom modeling code for {{ cookiecutter.model_type }} (empty while the stock megatron-core blocks suffice).

Put code here only when the model has a block that megatron-core's GPT layer spec cannot express, which
shows up as a config key no mapping or provider setting can translate, or tensors no stock mapping can
place (``bridgectl new-plugin --from-config`` lists both). Examples: another attention variant
(sliding-window or chunked attention, logit soft-capping), a norm with another formula, an MLP with
another activation layout, a vision tower. Keep it to what megatron-core lacks:

- a megatron-core module (a ``MegatronModule`` subclass) implementing the block, following
  megatron-core's tensor-parallel conventions so that the engine can shard its parameters;
- a ``ModuleSpec`` / layer spec function that swaps it into the transformer layer;
- a provider subclass (``bridge_core.model.provider.GPTModelProvider``) whose ``layer_spec()`` returns that
  spec, set as the bridge's ``PROVIDER_CLASS``;
- the mappings of its parameters in the bridge, and its FLOPs in ``flops.py``.

This package is imported by the bridge only, never by ``plugin.py`` (discovery must stay light).
"""
