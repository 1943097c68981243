"""The conversion engine: parameter discovery, a pure plan with coverage checks, and execution."""
