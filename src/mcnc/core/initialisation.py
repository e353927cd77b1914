"""Default-scale initialisation of a layout's flat vector, regenerated from a seed.

Every entry gets the spread PyTorch's default initialisation gives the parameter it belongs to
(``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``), with low-rank factors scaled so that their product
has it. PRANC's theta0 and basis scale, LoRA's initial factors and MCNC's experimental seeded
offset and per-layer scale all come from here.
"""

from __future__ import annotations

import math

import torch

from mcnc.core import rng
from mcnc.core.layout import Layout, Target

UNIT_BOUND = math.sqrt(3.0)
"""``U(-sqrt(3), sqrt(3))`` has unit variance."""


def init_bound(layout: Layout, target: Target) -> float:
    """PyTorch's default bound ``1/sqrt(fan_in)`` for a target, from its shape alone.

    Weights (2-d or more) use ``prod(shape[1:])``; a 1-d parameter uses the fan-in of the
    weight beside it in the same module (``<module>.weight``), or its own length if none.
    """
    if len(target.shape) >= 2:
        return 1 / math.sqrt(math.prod(target.shape[1:]))
    module = target.name.rpartition(".")[0]
    for t in layout.targets:
        if t.name == (f"{module}.weight" if module else "weight") and len(t.shape) >= 2:
            return 1 / math.sqrt(math.prod(t.shape[1:]))
    return 1 / math.sqrt(target.numel)


def element_std(layout: Layout) -> torch.Tensor:
    """Standard deviation of every entry of the layout's flat vector at initialisation, (total,).

    A directly stored target gets the std of ``U(-b, b)``, ``b / sqrt(3)``. A rank-r product
    ``B @ A`` of factors whose entries have variance ``s`` has entries of variance ``r * s**2``,
    so factor entries get variance ``s = sqrt(var / r)``.
    """
    return torch.cat([torch.full((t.size,), std) for t, std in
                      zip(layout.targets, target_std(layout), strict=True)])


def target_std(layout: Layout) -> list[float]:
    """The standard deviation of :func:`element_std` of each target, rounded to float32 (as a
    Python float)."""
    stds = []
    for t in layout.targets:
        var = init_bound(layout, t) ** 2 / 3
        if t.rank is not None:
            var = math.sqrt(var / t.rank)
        stds.append(float(torch.tensor(math.sqrt(var), dtype=torch.float32)))
    return stds


def seeded_init(layout: Layout, seed: int, stream: int) -> torch.Tensor:
    """A default-style initialisation of the flat vector, regenerated from ``seed``: entry i is
    ``U(-sqrt(3) std_i, sqrt(3) std_i)`` (see :func:`element_std`), word i of ``stream``."""
    unit = rng.uniform(seed, stream, (layout.total,), UNIT_BOUND)
    return unit * element_std(layout)
