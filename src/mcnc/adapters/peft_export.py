"""Export any mcnc adapter (MCNC, NOLA or LoRA) as a plain peft LoRA folder.

peft 0.21 keeps its methods in a closed enum (``PeftType``): ``register_peft_method`` refuses a
name the enum does not list, so an outside package cannot add a method that peft itself would
load. What peft does load is LoRA, and every mcnc adapter is a low-rank update
``scaling * B @ A`` of each targeted layer. This module writes those factors, generated once,
as a LoRA adapter: ``PeftModel.from_pretrained(base, folder)`` then gives the same outputs as
the mcnc adapter, at LoRA's file size (the factors themselves, not MCNC's seed, alphas and
betas). The mcnc folder stays the compact original; this is a copy for peft-based tools.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import safetensors.torch
import torch

from mcnc.adapters.model import AdapterModel
from mcnc.core.fileformat import atomic_write

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"


def peft_lora_files(model: AdapterModel, adapter_name: str | None = None
                    ) -> tuple[dict, dict[str, torch.Tensor]]:
    """The LoRA config (peft's JSON keys) and tensors of adapter ``adapter_name`` (default:
    the active one). peft names a layer's factors ``base_model.model.<layer>.lora_A.weight``
    (r, in) and ``...lora_B.weight`` (out, r); ``lora_alpha / r`` is the scaling."""
    name = adapter_name or model.active_adapter
    if name not in model.adapters:
        raise ValueError(f"no adapter named {name!r}; have {list(model.adapters)}")
    layers = [m for m in model._adapted_layers() if name in m.slots]
    transposed = {m.transposed for m in layers}
    if len(transposed) > 1:
        raise ValueError("peft's LoRA has one fan_in_fan_out setting per adapter, but this one "
                         "targets both Linear and Conv1D layers; export them as two adapters")
    config = model.adapters[name].config
    tensors = {}
    with torch.no_grad():
        for layer in layers:
            A, B = layer.factor_matrices([name])[name]
            prefix = f"base_model.model.{layer.layer_name}"
            tensors[f"{prefix}.lora_A.weight"] = A.detach().float().cpu().contiguous()
            tensors[f"{prefix}.lora_B.weight"] = B.detach().float().cpu().contiguous()
    base = getattr(getattr(model.base_model, "config", None), "name_or_path", None) or None
    peft_config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base,
        "r": config.rank, "lora_alpha": config.scaling * config.rank,
        "target_modules": sorted(m.layer_name for m in layers), "lora_dropout": config.dropout,
        "fan_in_fan_out": transposed == {True}, "bias": "none",
    }
    return peft_config, tensors


def export_peft_lora(model: AdapterModel, directory: str | os.PathLike,
                     adapter_name: str | None = None) -> Path:
    """Write adapter ``adapter_name`` (default: the active one) to ``directory`` as a peft
    LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``, written atomically).
    """
    config, tensors = peft_lora_files(model, adapter_name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / PEFT_WEIGHTS_NAME, safetensors.torch.save(tensors))
    atomic_write(directory / PEFT_CONFIG_NAME, json.dumps(config, indent=2).encode())
    return directory
