"""bridge-gpt-oss: GPT-OSS bridges for bridge-core.

Importing this package is cheap; the bridge (``bridge_gpt_oss.bridge``) imports torch and is
loaded by bridge-core only when a model of this family is converted.
"""

__version__ = "0.1.0"
