"""The conversion engine: parameter discovery, a pure plan with coverage checks, and execution; ``AutoBridge``
(its Python entry point, with Megatron-Bridge's method names) and ``workflows`` (the commands' jobs) on top."""
