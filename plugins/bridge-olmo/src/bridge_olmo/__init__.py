"""bridge-olmo: OLMo-2 and OLMoE bridges for bridge-core.

Importing this package is cheap; the bridges (``bridge_olmo.olmo2``, ``bridge_olmo.olmoe``) and the
modeling code (``bridge_olmo.modeling_olmo``) import torch and megatron-core and are loaded by
bridge-core only when a model of this family is converted.
"""

__version__ = "0.1.0"
