"""The ``bridgectl`` command line."""
