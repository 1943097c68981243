"""Training on megatron-core: the recipe contract (torch-free) and the trainer that runs it.

``config`` (typed training settings and ``key=value`` overrides) and ``recipe`` (the ``Recipe``
object plugins ship, and their lookup) import no torch; ``trainer``, ``checkpoint`` and ``data``
compose megatron-core and are imported only when a run starts.
"""

from bridge_core.training.config import TrainingConfig, apply_overrides
from bridge_core.training.recipe import ModelSpec, Recipe, SizedFor, load_recipe

__all__ = ["ModelSpec", "Recipe", "SizedFor", "TrainingConfig", "apply_overrides", "load_recipe"]
