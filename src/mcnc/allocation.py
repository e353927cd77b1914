"""Where MCNC's chunks go: along the flat vector, or shared out per layer.

Uniform (``power = 1``, the default): the targets lie end to end, the flat vector of length N
is cut into ``ceil(N / d)`` chunks of d, so a layer gets chunks in proportion to its size and a
chunk may straddle two layers.

Per layer (``power < 1``, experimental): layer l (the targets of one module: its weight and
bias, or their factors) gets its own ``c_l`` chunks, one each first and the rest in proportion
to ``size_l ** power``, so that small layers get more trained numbers per weight than uniform
cutting gives them. The ``c_l * d`` numbers a layer's chunks generate are laid end to end,
zero-padded to whole rounds of ``size_l`` and folded onto the layer by summing the rounds::

    w_l = sum_r out_l[r * size_l : (r + 1) * size_l]

so each entry of a small layer sums several generated directions (the paper's m, per layer).
A budget of n chunks is split first and d is then the smallest size that covers every layer
(``c_l * d >= size_l``); given only d, n is the smallest count whose split covers every layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mcnc.layout import Layout


def layer_groups(layout: Layout) -> list[int]:
    """Targets per layer: consecutive targets of one module (its weight and bias) form one."""
    groups: list[int] = []
    previous = None
    for t in layout.targets:
        module = t.name.rpartition(".")[0]
        if groups and module == previous:
            groups[-1] += 1
        else:
            groups.append(1)
        previous = module
    return groups


def group_sizes(layout: Layout, groups: list[int]) -> list[int]:
    """Generated numbers of each group of consecutive targets (``sum(groups)`` targets)."""
    if sum(groups) != len(layout.targets):
        raise ValueError(f"the layer groups hold {sum(groups)} targets, the layout "
                         f"{len(layout.targets)}")
    sizes, start = [], 0
    for count in groups:
        sizes.append(sum(t.size for t in layout.targets[start : start + count]))
        start += count
    return sizes


def layer_sizes(layout: Layout) -> list[int]:
    """Generated numbers per layer (see :func:`layer_groups`)."""
    return group_sizes(layout, layer_groups(layout))


def split_chunks(sizes: list[int], n: int, power: float) -> list[int]:
    """``n >= len(sizes)`` chunks shared out: one per layer, the rest in proportion to
    ``size ** power`` (largest remainder, ties to the earlier layer)."""
    if n < len(sizes):
        raise ValueError(f"{n} chunks cannot give each of {len(sizes)} layers one")
    weights = [s**power for s in sizes]
    quotas = [(n - len(sizes)) * w / sum(weights) for w in weights]
    counts = [1 + math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (math.floor(quotas[i]) - quotas[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def chunk_counts(sizes: list[int], d: int, power: float) -> list[int]:
    """Chunks per layer for chunk size ``d``: the split of the smallest n that covers every
    layer (``count * d >= size``)."""
    need = [-(-s // d) for s in sizes]
    total_weight = sum(s**power for s in sizes)
    n = max(len(sizes), *(len(sizes) + math.floor(max(0, c - 2) * total_weight / s**power)
                          for c, s in zip(need, sizes, strict=True)))  # a lower bound
    while True:
        counts = split_chunks(sizes, n, power)
        if all(c >= k for c, k in zip(counts, need, strict=True)):
            return counts
        n += 1


def covering_chunk_size(sizes: list[int], counts: list[int]) -> int:
    """The smallest chunk size with which ``counts`` chunks cover every layer."""
    return max(-(-s // c) for s, c in zip(sizes, counts, strict=True))


def fold_onto_layers(chunks: torch.Tensor, counts: list[int], sizes: list[int]) -> torch.Tensor:
    """Each layer's chunks, summed in rounds onto its entries (see the module docstring).

    Args:
        chunks: (sum(counts), d) generated chunks, layer by layer.

    Returns:
        (sum(sizes),) flat vector.
    """
    d = chunks.shape[1]
    pieces = torch.split(chunks.reshape(-1), [c * d for c in counts])
    folded = []
    for piece, size in zip(pieces, sizes, strict=True):
        rounds = -(-piece.numel() // size)
        folded.append(F.pad(piece, (0, rounds * size - piece.numel())).view(rounds, size).sum(0))
    return torch.cat(folded)
