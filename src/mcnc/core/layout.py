"""Where each compressed parameter lives in the flat generated vector.

A :class:`Layout` is a pure description (it is stored in the file's metadata): the selected
parameters in order, their shapes, their offsets in the flat vector, and whether they are
generated directly or as low-rank factors. Generated weights are turned back into named
tensors by :func:`materialize`.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from mcnc.core.config import Selection


@dataclass(frozen=True)
class Target:
    """One compressed parameter.

    Directly generated (``rank is None``): ``size = prod(shape)`` generated numbers are the
    parameter in row-major order. Low-rank: the parameter, viewed as an ``(out, in)`` matrix with
    ``in = prod(shape[1:])``, is ``B @ A``; the generated numbers are ``A`` (``rank x in``) then
    ``B`` (``out x rank``), row-major.
    """

    name: str
    shape: tuple[int, ...]
    offset: int
    rank: int | None = None
    aliases: tuple[str, ...] = ()

    @cached_property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return self.shape[0], math.prod(self.shape[1:])

    @cached_property
    def size(self) -> int:
        """Generated numbers this parameter takes in the flat vector."""
        if self.rank is None:
            return self.numel
        rows, cols = self.matrix_shape
        return self.rank * (rows + cols)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "offset": self.offset,
                "rank": self.rank, "aliases": list(self.aliases)}

    @classmethod
    def from_dict(cls, data: dict) -> Target:
        return cls(name=data["name"], shape=tuple(data["shape"]), offset=data["offset"],
                   rank=data["rank"], aliases=tuple(data["aliases"]))


@dataclass(frozen=True)
class Layout:
    """The compressed parameters of a model, in flat-vector order."""

    targets: tuple[Target, ...]
    state_keys: tuple[str, ...]
    """All keys of the original model's ``state_dict()``, in order."""

    @cached_property
    def total(self) -> int:
        """Length of the flat generated vector before padding."""
        return sum(t.size for t in self.targets)

    def n_chunks(self, d: int) -> int:
        return -(-self.total // d)

    def target_names(self) -> set[str]:
        return {n for t in self.targets for n in t.names}

    def to_dict(self) -> dict:
        return {"targets": [t.to_dict() for t in self.targets],
                "state_keys": list(self.state_keys)}

    @classmethod
    def from_dict(cls, data: dict) -> Layout:
        return cls(targets=tuple(Target.from_dict(t) for t in data["targets"]),
                   state_keys=tuple(data["state_keys"]))


def _parameter_aliases(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> every name it has in ``model`` (tied weights have several)."""
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    return aliases


def _selected_names(model: nn.Module, config: Selection) -> set[str]:
    if config.target_regex is not None:
        pattern = re.compile(config.target_regex)
        return {n for n, _ in model.named_parameters(remove_duplicate=False) if pattern.search(n)}
    names = set()
    for module_name, module in model.named_modules(remove_duplicate=False):
        if not isinstance(module, config.target_types):
            continue
        for attr in ("weight", "bias") if config.include_bias else ("weight",):
            if isinstance(module._parameters.get(attr), nn.Parameter):
                names.add(f"{module_name}.{attr}" if module_name else attr)
    return names


def modules_by_type(found: dict[str, list[str]]) -> str:
    """``"Conv2d: a, b, c and 2 more; Linear: d"`` for module names grouped by type."""
    return "; ".join(f"{kind}: {', '.join(names[:3])}"
                     + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                     for kind, names in found.items())


def _warn_uncovered(model: nn.Module, config: Selection, selected: set[str]) -> None:
    """Warn about weight matrices (2 or more dimensions) the selection leaves dense, by module
    type, naming the option that would cover them."""
    if config.target_regex is not None:
        return
    uncovered: dict[str, list[str]] = {}
    for module_name, module in model.named_modules():
        weight = module._parameters.get("weight")
        name = f"{module_name}.weight" if module_name else "weight"
        if isinstance(weight, nn.Parameter) and weight.dim() >= 2 and name not in selected:
            uncovered.setdefault(type(module).__name__, []).append(module_name)
    if uncovered:
        warnings.warn(f"these weight matrices are not compressed and stay dense "
                      f"({modules_by_type(uncovered)}"
                      "); add their types to target_types (or select them with target_regex) "
                      "to compress them", stacklevel=4)


def target_rank(shape: tuple[int, ...], rank: int | None, rule: str) -> int | None:
    """The rank a parameter of ``shape`` is factored at, or None to generate it directly.

    Only matrices and kernels (two or more dimensions, viewed as ``out x prod(rest)``) are
    factored. ``"always"``: every one of them, at ``min(rank, out, in)`` (a higher rank adds
    numbers but no expressive power), even where the factors hold more numbers than the
    tensor: the method compresses the factors, so the stored budget is what counts (the
    paper's "w/ LoRA"). ``"when-smaller"``: only where ``rank * (out + in) < out * in``.
    """
    if rank is None or len(shape) < 2:
        return None
    rows, cols = shape[0], math.prod(shape[1:])
    if rule == "always":
        return min(rank, rows, cols)
    return rank if rank * (rows + cols) < rows * cols else None


def plan_layout(model: nn.Module, config: Selection) -> Layout:
    """Select the parameters ``config`` asks for and lay them out in a flat vector (as low-rank
    factors where ``config.factor_rank`` is set, by ``config.factor_rule``: see
    :func:`target_rank`).

    Raises:
        ValueError: if the selection matches no parameter.
    """
    selected = _selected_names(model, config)
    _warn_uncovered(model, config, selected)
    aliases = _parameter_aliases(model)
    targets, offset = [], 0
    for name, param in model.named_parameters():
        names = aliases[id(param)]
        if not selected.intersection(names):
            continue
        shape = tuple(param.shape)
        rank = target_rank(shape, config.factor_rank, config.factor_rule)
        target = Target(name=name, shape=shape, offset=offset, rank=rank,
                        aliases=tuple(n for n in names if n != name))
        targets.append(target)
        offset += target.size
    if not targets:
        what = (f"target_regex={config.target_regex!r}" if config.target_regex is not None
                else f"target_types={[t.__name__ for t in config.target_types]}")
        raise ValueError(f"{what} matched no parameter of {type(model).__name__}; "
                         "set target_types or target_regex to select some")
    return Layout(targets=tuple(targets), state_keys=tuple(model.state_dict().keys()))


def layout_mismatches(layout: Layout, model: nn.Module, ordered: bool = True) -> list[str]:
    """Differences between a stored layout and a model (empty when they agree); with
    ``ordered=False`` the state keys only need to be the same set."""
    params = dict(model.named_parameters(remove_duplicate=False))
    problems = []
    for target in layout.targets:
        for name in target.names:
            if name not in params:
                problems.append(f"parameter {name!r} is missing from the model")
            elif tuple(params[name].shape) != target.shape:
                problems.append(f"parameter {name!r} has shape {tuple(params[name].shape)}, "
                                f"the file has {target.shape}")
    keys = tuple(model.state_dict().keys())
    if (keys != layout.state_keys) if ordered else (set(keys) != set(layout.state_keys)):
        extra, missing = set(keys) - set(layout.state_keys), set(layout.state_keys) - set(keys)
        problems.append(f"state_dict keys differ (model has {len(keys)}, file has "
                        f"{len(layout.state_keys)}; only in model: {sorted(extra)[:5]}, only in "
                        f"file: {sorted(missing)[:5]})")
    return problems


def owner_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding parameter ``name`` and the attribute name, e.g. ``(fc, "weight")``."""
    module_path, _, attr = name.rpartition(".")
    return (model.get_submodule(module_path) if module_path else model), attr


def materialize(layout: Layout, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Turn the flat vector (length >= ``layout.total``) into one tensor per target.

    Targets lie end to end from offset 0 (as :func:`plan_layout` makes them and file loading
    checks), so one ``torch.split`` cuts them all: its backward writes the gradient of the flat
    vector once, where a slice per target would each allocate and zero a flat-sized gradient.

    Returns:
        canonical parameter name -> tensor of the parameter's shape (views where possible).
    """
    sizes = [t.size for t in layout.targets]
    pieces = torch.split(flat, [*sizes, flat.numel() - layout.total])
    out = {}
    for t, piece in zip(layout.targets, pieces, strict=False):
        if t.rank is None:
            out[t.name] = piece.view(t.shape)
        else:
            rows, cols = t.matrix_shape
            a = piece[: t.rank * cols].view(t.rank, cols)
            b = piece[t.rank * cols :].view(rows, t.rank)
            out[t.name] = (b @ a).view(t.shape)
    return out
