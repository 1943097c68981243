"""Test utilities for bridge-core and plugin authors: toy models, comparisons, a CPU distributed runner.

Importing this package is light; each helper imports torch/transformers only when called.
"""
