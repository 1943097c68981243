"""bridge-llama: Llama-family bridges for bridge-core."""

__version__ = "1.0.0"
