"""Checkpoint I/O: HF folders, safetensors, GGUF, Hub downloads, Megatron-LM checkpoints, atomic outputs."""
