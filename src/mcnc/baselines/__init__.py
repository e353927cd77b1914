"""Baselines in the same harness and file format as MCNC: PRANC, NOLA, LoRA and magnitude
pruning. Each is a :class:`~mcnc.core.reparam.Reparameterized` model."""

from mcnc.baselines.lora import LoRAConfig, LoRAModel, lora
from mcnc.baselines.pruning import PrunedModel, PruningConfig, prune
from mcnc.baselines.subspace import NOLAConfig, NOLAModel, PRANCConfig, PRANCModel, nola, pranc

__all__ = ["LoRAConfig", "LoRAModel", "NOLAConfig", "NOLAModel", "PRANCConfig", "PRANCModel",
           "PrunedModel", "PruningConfig", "lora", "nola", "pranc", "prune"]
