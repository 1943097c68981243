"""The plugin system: hook specs, the contract version, discovery and the registry. Imports no torch."""
