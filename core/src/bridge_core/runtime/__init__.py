"""Running megatron-core models: process groups, parallel sizes, CPU support, forward and generation."""
