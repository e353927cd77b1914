"""A seeded orthogonal mixing of MCNC's generated vector: each chunk then moves weights all
over the network instead of only its own d (used by :mod:`mcnc.core.manifold`).

A PRANC coefficient moves every weight of the network, an MCNC chunk only d of them. Mixing
the generated vector x (the n chunks end to end, zero-padded to length D = 2**ceil(log2(n d)))
with a seeded randomised Hadamard transform keeps the manifold's geometry (the map is an
isometry) and spreads every chunk over all weights::

    y = P H S x / sqrt(D)          theta_i = (std_i / s) * y_i,   i < N

S: random signs; H: the D x D Walsh-Hadamard matrix (entries +-1, ``H H = D I``), applied with
D log2 D additions and no matrix; P: a random permutation; std_i: the spread of entry i's layer
at the start (for compression PyTorch's default initialisation), since after
mixing every entry has the same spread, and s their root mean square, so that the betas start
about as large as without mixing (``s sqrt(D / n)`` for n chunks) and a learning rate means
the same in both. Signs and permutation come from the seed (streams
``MIXING_SIGN_STREAM`` and ``MIXING_PERMUTATION_STREAM``); the cost per forward is O(D log D),
far below PRANC's O(D N).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mcnc.core import mixing_kernels as kernels
from mcnc.core import rng


def padded_length(numbers: int) -> int:
    """The power of two the mixed vector is padded to."""
    return 1 << max(0, math.ceil(math.log2(numbers)))


def hadamard(x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """``H x`` for a vector of power-of-two length D (Sylvester order, unnormalised): log2 D
    butterfly passes, pairs at distance 1, 2, 4, ... (``reverse``: ..., 4, 2, 1; the passes
    commute, so both orders give H x, with different rounding). Not differentiable itself:
    :class:`_Hadamard` is.

    Every entry goes through the same additions in the same order on every path, so the bits
    are the same: compiled loops (:mod:`mcnc.core.mixing_kernels`) for float32 CPU vectors
    when numba is available, PyTorch's elementwise passes otherwise (:func:`butterfly_passes`).
    """
    length = x.numel()
    if length & (length - 1):
        raise ValueError(f"the Hadamard transform needs a power-of-two length, got {length}")
    if not _compiled_path(x, length):
        return butterfly_passes(x, reverse)
    out = x.detach().reshape(length).clone()
    kernels.transform_in_place(out.numpy(), reverse)
    return out


def butterfly_passes(x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """:func:`hadamard` as one PyTorch pass per level over the whole vector."""
    length = x.numel()
    halves = [1 << i for i in range(length.bit_length() - 1)]
    order = reversed(halves) if reverse else halves
    if torch.compiler.is_compiling():  # the compiler fuses these, but cannot take out= views
        for half in order:
            pairs = x.reshape(-1, 2, half)
            x = torch.stack((pairs[:, 0] + pairs[:, 1], pairs[:, 0] - pairs[:, 1]), dim=1)
        return x.reshape(length)
    buffers = (torch.empty_like(x), torch.empty_like(x))  # written in turn: no stack copies
    for step, half in enumerate(order):
        pairs, out = x.reshape(-1, 2, half), buffers[step % 2].view(-1, 2, half)
        torch.add(pairs[:, 0], pairs[:, 1], out=out[:, 0])
        torch.sub(pairs[:, 0], pairs[:, 1], out=out[:, 1])
        x = buffers[step % 2]
    return x.reshape(length)


KERNEL_MIN_LENGTH = 1 << 10
"""Shorter vectors take PyTorch's passes (a call into the compiled loops costs more there)."""


def _compiled_path(x: torch.Tensor, length: int) -> bool:
    """Whether ``x`` (mixed at ``length``) goes through the compiled loops."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and length >= KERNEL_MIN_LENGTH
            and not torch.compiler.is_compiling() and kernels.available())


class _Hadamard(torch.autograd.Function):
    """:func:`hadamard` with a backward of its own: H is symmetric, so the gradient is H g,
    its passes in reverse order. That is exactly what autograd computes through the passes
    (each butterfly's transpose is itself and x + y == y + x in floating point), without
    recording a graph of a dozen nodes per pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return hadamard(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return hadamard(grad, reverse=True)


class _Permute(torch.autograd.Function):
    """``z[order]`` whose backward copies the gradient back through the permutation (a plain
    index's backward accumulates, which is much slower on a CPU)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(order)
        ctx.length = z.numel()
        return torch.index_select(z, 0, order)  # 2x faster than z[order] on a CPU, same values

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (order,) = ctx.saved_tensors
        return grad.new_zeros(ctx.length).index_copy_(0, order.long(), grad), None


def index_dtype(length: int) -> torch.dtype:
    """The narrowest integer type that indexes ``length`` entries (int32 below 2**31)."""
    return torch.int32 if length < 2**31 else torch.int64


def seeded_order(seed: int, stream: int, length: int, keep: int | None = None
                 ) -> torch.Tensor:
    """``(keep,)`` (default ``length``), :func:`index_dtype`: the first ``keep`` entries of
    the permutation that sorts ``rng.uniform(seed, stream, (length,), 1.0)`` (a stable
    argsort: ties keep their index order).

    Sorted as integers, which is the same order: a key is ``2 u - 1`` for ``u = (w >> 8 + 0.5)
    / 2**24``, i.e. ``(2 (w >> 8) + 1 - 2**24) / 2**24``, an odd multiple of ``2**-24`` in
    (-1, 1) that float32 holds exactly, so keys are equal or ordered exactly as the top 24 bits
    of their words are. The compiled loops sort these 24-bit integers in two counting passes
    on PyTorch's threads (:func:`mcnc.core.mixing_kernels.sorted_order`; with the random
    words, a million keys in about 10 ms on one thread and 6 ms on two here,
    ``benchmarks/cold_loads.py``; with PyTorch's integer sort 27.9 ms on one thread,
    results/mixing-speed.md, and 107 ms with its float sort); without them PyTorch sorts.
    The order was most of the time of loading a mixed file."""
    keep = length if keep is None else keep
    dtype = index_dtype(length)
    top = (rng.random_words(seed, stream, 0, length) >> 8).astype(np.int32)
    order = kernels.sorted_order(top, keep, np.int32 if dtype == torch.int32 else np.int64)
    if order is not None:
        return torch.from_numpy(order)
    return torch.argsort(torch.from_numpy(top), stable=True)[:keep].to(dtype)


def seeded_signs(seed: int, stream: int, length: int) -> torch.Tensor:
    """``(length,)`` int8: the signs of ``rng.uniform(seed, stream, (length,), 1.0)``, read
    off the words (an entry is negative exactly when its word is below ``2**31``: its top 24
    bits, plus a half, are then below ``2**23``)."""
    words = rng.random_words(seed, stream, 0, length)
    return torch.from_numpy((words >> 31).astype(np.int8) * np.int8(2) - np.int8(1))


class _Mix(torch.autograd.Function):
    """The whole mixing ``(H S [x; 0])[order] / sqrt(D) * scale`` of a float32 CPU vector by
    the compiled loops (:func:`mcnc.core.mixing_kernels.mix`, ``unmix`` for the gradient): the
    bits of :meth:`SeededMixing.forward`'s separate steps, without the intermediate tensors
    those steps allocate and autograd keeps."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mixing: SeededMixing, scale: torch.Tensor
                ) -> torch.Tensor:
        signs, order = mixing.signs, mixing.order
        ctx.save_for_backward(scale)
        ctx.mixing, ctx.numbers = mixing, x.numel()
        out = x.new_empty(order.numel())
        kernels.mix(x.detach().contiguous().numpy(), signs.numpy(), order.numpy(),
                    _divisor(signs.numel()), scale.numpy(), out.numpy())
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        signs, inverse = ctx.mixing.signs, ctx.mixing.inverse()  # built on the first backward
        out = grad.new_empty(ctx.numbers)
        kernels.unmix(grad.contiguous().numpy(), signs.numpy(), inverse.numpy(),
                      _divisor(signs.numel()), scale.numpy(), out.numpy())
        return out, None, None


def _divisor(length: int) -> np.float32:
    """``sqrt(D)`` rounded to float32, as PyTorch rounds a Python number dividing a float32
    tensor."""
    return np.float32(math.sqrt(length))


@dataclass(eq=False, slots=True, weakref_slot=True)
class _DrawnMixing:
    """The frozen random parts of a mixing: ``signs`` ``(D,)`` int8 (+-1) and ``order``
    ``(keep,)`` int32 (int64 from 2**31 entries), 1 + 4 keep / D bytes per padded entry."""

    signs: torch.Tensor
    order: torch.Tensor


_DRAWN: weakref.WeakValueDictionary[tuple, _DrawnMixing] = weakref.WeakValueDictionary()
"""Drawn mixings by ``(seed, streams, length, keep)`` while a module holds them: adapters with
the same seed and sizes (every adapter of ``mcnc finetune --seed 0``) share one copy."""


def drawn_mixing(seed: int, streams: tuple[int, int], length: int, keep: int) -> _DrawnMixing:
    """The signs and order of :class:`SeededMixing`, drawn from the seed, or the copy a live
    module already holds."""
    key = (seed, streams, length, keep)
    drawn = _DRAWN.get(key)
    if drawn is None:
        drawn = _DRAWN[key] = _DrawnMixing(seeded_signs(seed, streams[0], length),
                                           seeded_order(seed, streams[1], length, keep))
    return drawn


def forget_drawn() -> None:
    """Forget the shared drawn mixings: the next module draws its own from the seed, as in a
    fresh process (modules alive keep theirs). For timing a cold load."""
    _DRAWN.clear()


class SeededMixing(nn.Module):
    """``y = P H S x / sqrt(D)`` for x of length ``numbers`` (zero-padded to D), keeping the
    first ``keep`` entries of y; S and P from the random streams ``streams`` (signs,
    permutation keys) of ``seed``. Its buffers (int8 signs, int32 order: about 5 bytes per
    padded entry) are shared with every live module of the same seed, streams and sizes."""

    def __init__(self, numbers: int, keep: int, seed: int,
                 streams: tuple[int, int] = (rng.MIXING_SIGN_STREAM,
                                             rng.MIXING_PERMUTATION_STREAM)):
        super().__init__()
        self.length, self.keep = padded_length(numbers), keep
        self._drawn = drawn_mixing(seed, tuple(streams), self.length, keep)
        self.register_buffer("signs", self._drawn.signs, persistent=False)
        self.register_buffer("order", self._drawn.order, persistent=False)
        self._inverse_order: torch.Tensor | None = None

    def inverse(self) -> torch.Tensor:
        """``(D,)`` ``inverse[order[j]] = j``, -1 at the dropped entries: the compiled
        backward gathers through it (built on first use; int32, D * 4 bytes, while it fits)."""
        if self._inverse_order is None or self._inverse_order.device != self.order.device:
            dtype = index_dtype(self.length)
            inverse = torch.full((self.length,), -1, dtype=dtype, device=self.order.device)
            inverse[self.order.long()] = torch.arange(self.keep, dtype=dtype,
                                                      device=self.order.device)
            self._inverse_order = inverse
        return self._inverse_order

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """``y`` for ``x`` of length ``numbers``; times ``scale`` (``(keep,)``) if given."""
        if (x.dim() == 1 and _compiled_path(x, self.length) and self.signs.device == x.device
                and (scale is None or (scale.dtype == x.dtype and scale.is_contiguous()))):
            return _Mix.apply(x, self, x.new_empty(0) if scale is None else scale)
        padded = torch.nn.functional.pad(x, (0, self.length - x.numel()))
        y = _Permute.apply(_Hadamard.apply(padded * self.signs), self.order) / math.sqrt(
            self.length)
        return y if scale is None else y * scale
