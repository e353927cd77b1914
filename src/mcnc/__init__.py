"""mcnc: Manifold-Constrained Neural Compression for PyTorch.

Weights are cut into chunks of d numbers and every chunk is ``beta * phi(alpha)``, where
``phi`` is a frozen, seeded sine network that winds the cube ``[-L, L]^k`` around the unit
sphere in R^d. Only alpha and beta are trained and stored.
"""

from mcnc import baselines
from mcnc.adapters import (
    AdapterModel,
    LoRAAdapterConfig,
    MCNCAdapterConfig,
    NOLAAdapterConfig,
    get_adapter_model,
)
from mcnc.compress import MCNCModel, compress
from mcnc.core.config import MCNCConfig
from mcnc.core.errors import DivergedError
from mcnc.core.fileformat import FormatError, load, read, reconstruct, save
from mcnc.core.generator import Generator, GeneratorSpec, fold_into_cube
from mcnc.core.summary import Summary, summarize

__version__ = "0.3.0"

__all__ = [
    "AdapterModel",
    "DivergedError",
    "FormatError",
    "Generator",
    "GeneratorSpec",
    "LoRAAdapterConfig",
    "MCNCAdapterConfig",
    "MCNCConfig",
    "MCNCModel",
    "NOLAAdapterConfig",
    "Summary",
    "baselines",
    "compress",
    "fold_into_cube",
    "get_adapter_model",
    "load",
    "read",
    "reconstruct",
    "save",
    "summarize",
]
