"""Which linear layers of a model an adapter adapts (``target_modules``), and the weight
matrices no adapter can reach."""

from __future__ import annotations

import re
import warnings

import torch
from torch import nn

from mcnc.adapters.config import ALL_LINEAR
from mcnc.adapters.layer import AdapterLinear, linear_shape
from mcnc.adapters.sources import AdaptedLayer
from mcnc.core.errors import FormatError
from mcnc.core.layout import modules_by_type


def _is_linear(module: nn.Module) -> bool:
    """A linear-like layer (:func:`~mcnc.adapters.layer.linear_shape`) not yet wrapped."""
    return not isinstance(module, AdapterLinear) and linear_shape(module) is not None


def out_in(layer: nn.Module) -> tuple[int, int]:
    in_features, out_features, _ = linear_shape(layer)
    return out_features, in_features


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every linear layer of ``model`` by name (the wrapped layer for adapted ones)."""
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, AdapterLinear):
            layers[name] = module.base_layer
        elif _is_linear(module) and not name.endswith(".base_layer"):
            layers[name] = module
    return layers


def _output_head(model: nn.Module) -> set[str]:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    names = {n for n, m in model.named_modules()
             if m is head or (isinstance(m, AdapterLinear) and m.base_layer is head)}
    return names | {"lm_head"}


def select_targets(model: nn.Module, spec: str | tuple[str, ...]) -> tuple[AdaptedLayer, ...]:
    """The linear layers of ``model`` that ``target_modules=spec`` selects, in model order:
    ``"all-linear"`` (every one but the output head), a regex matched against the whole name,
    or names (a layer matches a name equal to its own or to its last parts)."""
    layers = linear_layers(model)
    if spec == ALL_LINEAR:
        head = _output_head(model)
        names = [n for n in layers if n not in head]
    elif isinstance(spec, str):
        names = [n for n in layers if re.fullmatch(spec, n)]
    else:
        names = [n for n in layers if any(n == s or n.endswith("." + s) for s in spec)]
    if not names:
        raise ValueError(f"target_modules={spec!r} matched no linear layer; some layer "
                         f"names: {list(layers)[:8]}")
    return tuple(AdaptedLayer(n, *out_in(layers[n])) for n in names)


def warn_unadaptable(model: nn.Module) -> None:
    """Warn about weight matrices no adapter can reach: leaf modules with a weight of two or
    more dimensions that are neither linear layers nor embeddings (e.g. convolutions)."""
    found: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")
        if (isinstance(weight, torch.Tensor) and weight.dim() >= 2 and not _is_linear(module)
                and not isinstance(module, nn.Embedding | AdapterLinear)
                and next(module.children(), None) is None):
            found.setdefault(type(module).__name__, []).append(name)
    if found:
        warnings.warn(f"adapters only adapt linear layers; these weight matrices stay frozen "
                      f"({modules_by_type(found)}). To train them too, compress them with "
                      "mcnc.compress(model, MCNCConfig(mode='delta', target_regex=...))",
                      stacklevel=3)


def check_layers_fit(model: nn.Module, targets: tuple[AdaptedLayer, ...]) -> None:
    """Raise :class:`~mcnc.core.errors.FormatError` unless ``model`` has every adapted layer, of
    the same shape (an adapter file read for the wrong base model)."""
    layers = linear_layers(model)
    for t in targets:
        layer = layers.get(t.name)
        if layer is None:
            raise FormatError(f"the adapter targets layer {t.name!r}, which the model does "
                              "not have (or is not linear): wrong base model?")
        out_features, in_features = out_in(layer)
        if (out_features, in_features) != (t.out_features, t.in_features):
            raise FormatError(f"layer {t.name!r} is {out_features}x{in_features} in the "
                              f"model, {t.out_features}x{t.in_features} in the adapter")
