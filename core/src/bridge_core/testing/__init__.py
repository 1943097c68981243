"""Test utilities for bridge-core and plugin authors: toy models, comparisons, a CPU distributed runner.

Importing this package is light; each helper imports torch/transformers only when called.
``conformance.BridgeConformance`` is the suite a plugin subclasses; ``pytest_plugin`` (loaded by pytest
through the ``pytest11`` entry point) adds the fixtures ``toy_model_factory``, ``cpu_launcher`` and
``isolated_registry`` and the ``gpu`` marker. See docs/conformance-kit.md.
"""
