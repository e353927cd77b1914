"""Adapters for fine-tuning: MCNC, NOLA and LoRA updates of a frozen model's linear layers,
with a peft-like API (see :mod:`mcnc.adapters.model`)."""

from mcnc.adapters.config import (
    AdapterConfig,
    LoRAAdapterConfig,
    MCNCAdapterConfig,
    NOLAAdapterConfig,
)
from mcnc.adapters.layer import BASE, AdapterLinear
from mcnc.adapters.model import AdapterModel, get_adapter_model

__all__ = [
    "BASE",
    "AdapterConfig",
    "AdapterLinear",
    "AdapterModel",
    "LoRAAdapterConfig",
    "MCNCAdapterConfig",
    "NOLAAdapterConfig",
    "get_adapter_model",
]
