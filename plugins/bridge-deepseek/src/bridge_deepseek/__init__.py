"""bridge-deepseek: DeepSeek-V2 and DeepSeek-V3 bridges for bridge-core.

Importing this package is cheap; the bridges (``bridge_deepseek.bridge``) import torch and
megatron-core and are loaded by bridge-core only when a model of this family is converted.
"""

__version__ = "0.1.0"
