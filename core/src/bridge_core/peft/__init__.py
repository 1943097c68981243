"""Parameter-efficient fine-tuning: LoRA / DoRA adapters on megatron-core linears, PEFT checkpoints,
and adapters in Hugging Face PEFT's format (export, merge, import). Importing this package is torch-free."""
