"""bridge-mixtral: Mixtral bridges for bridge-core.

Importing this package is cheap; the bridges (``bridge_mixtral.bridge``) import torch
and are loaded by bridge-core only when a model of this family is converted.
"""

__version__ = "0.1.0"
