"""Training checkpoints without pickle: model and optimiser tensors in safetensors, everything
else (epoch, schedule, history, settings) as JSON in the same file. Written atomically.

The state of torch's global random number generators goes in too (``rng.cpu``, and
``rng.cuda`` on a GPU), so that dropout or anything else drawing from them continues after a
resume exactly as in a run that was never interrupted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import safetensors.torch
import torch

from mcnc.core.errors import FormatError
from mcnc.core.fileformat import atomic_write

CHECKPOINT_FORMAT = "mcnc-checkpoint"


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler, info: dict,
                    trainable_only: bool = False) -> Path:
    """Write the model's ``state_dict()`` (``trainable_only``: only the parameters that train,
    e.g. an adapter's, without its frozen base model), the optimiser state and ``info``
    (JSON-able)."""
    state = trainable(model) if trainable_only else model.state_dict()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in state.items()}
    opt = optimizer.state_dict()
    for index, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors |= _rng_states()
    meta = {"format": CHECKPOINT_FORMAT, "info": info, "param_groups": opt["param_groups"],
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "model_tensors": "trainable" if trainable_only else "state_dict"}
    data = safetensors.torch.save(tensors, metadata={"mcnc": json.dumps(meta)})
    return atomic_write(path, data)


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train, by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _rng_states() -> dict[str, torch.Tensor]:
    """The global generators' states as uint8 tensors (the CUDA one of the current device)."""
    states = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["rng.cuda"] = torch.cuda.get_rng_state()
    return states


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, meta)`` of a checkpoint; raises :class:`FormatError` if it is not one."""
    try:
        tensors = safetensors.torch.load_file(str(path))
        with safetensors.safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["mcnc"])
    except Exception as e:  # safetensors raises several types for malformed files
        raise FormatError(f"{path} is not a readable mcnc checkpoint ({e}); delete it to "
                          "start over") from e
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise FormatError(f"{path} is not an mcnc training checkpoint")
    return tensors, meta


def restore(tensors: dict[str, torch.Tensor], meta: dict, model: torch.nn.Module,
            optimizer: torch.optim.Optimizer, scheduler) -> None:
    """Load a checkpoint read by :func:`read_checkpoint` into live objects, and give torch's
    global random number generators the states they had when it was saved. Trainable tensors
    are checked against the model, and the optimiser's state loaded (which checks its
    groups), before any of the model's values change."""
    saved = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    only_trainable = meta.get("model_tensors") == "trainable"
    if only_trainable:  # a whole state dict is checked by load_state_dict (which knows the
        _check_shapes(saved, trainable(model))  # names of older versions)
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    if only_trainable:
        with torch.no_grad():
            for name, p in trainable(model).items():
                p.copy_(saved[name])
    else:
        model.load_state_dict(saved)
    if "rng.cpu" in tensors:  # absent in checkpoints written before it was stored
        torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def _check_shapes(saved: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> None:
    """The saved model tensors are ``ours`` by name, shape for shape."""
    ours_shapes = {k: tuple(v.shape) for k, v in ours.items()}
    theirs = {k: tuple(v.shape) for k, v in saved.items()}
    if ours_shapes != theirs:
        differ = sorted(set(ours_shapes.items()) ^ set(theirs.items()))[:3]
        raise FormatError(f"the checkpoint's model tensors do not fit this model ({differ}); "
                          "delete it to start over")
