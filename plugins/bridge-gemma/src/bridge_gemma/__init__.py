"""bridge-gemma: Gemma bridges for bridge-core.

Importing this package is cheap; the bridges (``bridge_gemma.bridge``) and the modeling code
(``bridge_gemma.modeling_gemma``) import torch and megatron-core and are loaded by bridge-core only
when a model of this family is converted.
"""

__version__ = "0.1.0"
