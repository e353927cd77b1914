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

import numpy as np
import torch
from torch import nn

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
    are the same: a compiled loop (:func:`_butterflies_in_place`) for float32 CPU vectors when
    numba is available, PyTorch's elementwise passes otherwise (:func:`butterfly_passes`).
    """
    length = x.numel()
    if length & (length - 1):
        raise ValueError(f"the Hadamard transform needs a power-of-two length, got {length}")
    kernel = _kernel() if (x.device.type == "cpu" and x.dtype == torch.float32
                           and length >= KERNEL_MIN_LENGTH
                           and not torch.compiler.is_compiling()) else None
    if kernel is None:
        return butterfly_passes(x, reverse)
    out = x.detach().reshape(length).clone()
    kernel(out.numpy(), reverse, KERNEL_BLOCK)
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
"""Shorter vectors take PyTorch's passes (a call into the compiled loop costs more there)."""
KERNEL_BLOCK = 1 << 15
"""The levels whose butterflies stay within this many entries (128 KiB of float32, the size
of a core's second-level cache) run block by block while the block sits in the cache."""


def _radix8(x: np.ndarray, h: int, down: bool) -> None:
    """Three levels in one pass, distances ``h, 2h, 4h`` (``down``: ``4h, 2h, h``): the eight
    entries ``j + m h`` (m < 8) of each group of ``8 h`` are loaded once, go through their
    three butterflies in registers and are stored once."""
    for i in range(0, x.size, 8 * h):
        for j in range(i, i + h):
            a0, a1, a2, a3 = x[j], x[j + h], x[j + 2 * h], x[j + 3 * h]
            a4, a5, a6, a7 = x[j + 4 * h], x[j + 5 * h], x[j + 6 * h], x[j + 7 * h]
            if down:  # distance 4h first
                a0, a4, a1, a5 = a0 + a4, a0 - a4, a1 + a5, a1 - a5
                a2, a6, a3, a7 = a2 + a6, a2 - a6, a3 + a7, a3 - a7
            else:  # distance h first
                a0, a1, a2, a3 = a0 + a1, a0 - a1, a2 + a3, a2 - a3
                a4, a5, a6, a7 = a4 + a5, a4 - a5, a6 + a7, a6 - a7
            a0, a2, a1, a3 = a0 + a2, a0 - a2, a1 + a3, a1 - a3
            a4, a6, a5, a7 = a4 + a6, a4 - a6, a5 + a7, a5 - a7
            if down:  # distance h last
                a0, a1, a2, a3 = a0 + a1, a0 - a1, a2 + a3, a2 - a3
                a4, a5, a6, a7 = a4 + a5, a4 - a5, a6 + a7, a6 - a7
            else:  # distance 4h last
                a0, a4, a1, a5 = a0 + a4, a0 - a4, a1 + a5, a1 - a5
                a2, a6, a3, a7 = a2 + a6, a2 - a6, a3 + a7, a3 - a7
            x[j], x[j + h], x[j + 2 * h], x[j + 3 * h] = a0, a1, a2, a3
            x[j + 4 * h], x[j + 5 * h], x[j + 6 * h], x[j + 7 * h] = a4, a5, a6, a7


def _radix2(x: np.ndarray, h: int) -> None:
    """One level: the butterflies at distance ``h``."""
    for i in range(0, x.size, 2 * h):
        for j in range(i, i + h):
            a, b = x[j], x[j + h]
            x[j], x[j + h] = a + b, a - b


def _butterflies_in_place(x: np.ndarray, reverse: bool, block: int) -> None:
    """``x <- H x`` in place for a float32 array of power-of-two length: the butterflies
    ``(a, b) -> (a + b, a - b)`` of :func:`butterfly_passes`, level by level in the same order,
    three levels per pass over memory (:func:`_radix8`; the top one or two levels alone), and
    the passes whose groups fit in ``block`` entries block by block. Each butterfly still
    reads the two values the previous level wrote, so every entry gets the same bits.
    Compiled by numba (:func:`_kernel`)."""
    n, levels = x.size, 0
    while (1 << levels) < n:
        levels += 1
    groups, block = levels // 3, min(block, n)
    local = 0  # groups whose 8 h entries fit in a block (h = 8**g)
    while local < groups and 8 ** (local + 1) <= block:
        local += 1
    if not reverse:
        if local:
            for start in range(0, n, block):
                for g in range(local):
                    _radix8(x[start:start + block], 8**g, False)
        for g in range(local, groups):
            _radix8(x, 8**g, False)
        for level in range(3 * groups, levels):
            _radix2(x, 1 << level)
        return
    for level in range(levels - 1, 3 * groups - 1, -1):
        _radix2(x, 1 << level)
    for g in range(groups - 1, local - 1, -1):
        _radix8(x, 8**g, True)
    if local:
        for start in range(0, n, block):
            for g in range(local - 1, -1, -1):
                _radix8(x[start:start + block], 8**g, True)


def _signed_into(x: np.ndarray, signs: np.ndarray, buf: np.ndarray) -> None:
    """``buf <- S [x; 0]``: ``x`` zero-padded to ``buf``'s length, times the signs (the
    padding too, so its zeros carry the signs a padded tensor times the signs would)."""
    n, zero = x.size, np.float32(0.0)
    for i in range(n):
        buf[i] = x[i] * signs[i]
    for i in range(n, buf.size):
        buf[i] = zero * signs[i]


def _mix_forward(x: np.ndarray, signs: np.ndarray, order: np.ndarray, divisor: np.float32,
                 buf: np.ndarray, out: np.ndarray, block: int) -> None:
    """``out <- (H S [x; 0])[order] / divisor`` through the scratch vector ``buf``."""
    _signed_into(x, signs, buf)
    _butterflies_in_place(buf, False, block)
    for j in range(out.size):
        out[j] = buf[order[j]] / divisor


def _mix_backward(grad: np.ndarray, signs: np.ndarray, order: np.ndarray, divisor: np.float32,
                  buf: np.ndarray, out: np.ndarray, block: int) -> None:
    """The gradient of :func:`_mix_forward` with respect to ``x`` (``out``, of x's length):
    ``grad / divisor`` scattered back through the permutation (zeros elsewhere), ``H`` with
    the passes in reverse order, times the signs."""
    buf[:] = 0.0
    for j in range(grad.size):
        buf[order[j]] = grad[j] / divisor
    _butterflies_in_place(buf, True, block)
    for i in range(out.size):
        out[i] = buf[i] * signs[i]


_KERNELS = ("_radix8", "_radix2", "_butterflies_in_place", "_signed_into", "_mix_forward",
            "_mix_backward")
_compiled: dict = {}


def _kernel(name: str = "_butterflies_in_place"):
    """The compiled loop ``name`` (of ``_KERNELS``), or None where numba cannot be used
    (:func:`mcnc.core.rng.numba_module`). Every loop is compiled by numba on first use, the
    helpers first, by rebinding this module's names; the machine code is cached on disk."""
    if "kernels" not in _compiled:
        numba = rng.numba_module()
        if numba is not None:
            names = globals()
            for kernel in _KERNELS:
                names[kernel] = numba.njit(cache=True, nogil=True, boundscheck=False)(
                    names[kernel])
        _compiled["kernels"] = None if numba is None else {k: names[k] for k in _KERNELS}
    kernels = _compiled["kernels"]
    return None if kernels is None else kernels[name]


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
        return grad.new_zeros(ctx.length).index_copy_(0, order, grad), None


def seeded_order(seed: int, stream: int, length: int) -> torch.Tensor:
    """``(length,)`` int64: the permutation that sorts ``rng.uniform(seed, stream, (length,),
    1.0)`` (a stable argsort: ties keep their index order).

    Sorted as integers, which is the same order: a key is ``2 u - 1`` for ``u = (w >> 8 + 0.5)
    / 2**24``, i.e. ``(2 (w >> 8) + 1 - 2**24) / 2**24``, an odd multiple of ``2**-24`` in
    (-1, 1) that float32 holds exactly, so keys are equal or ordered exactly as the top 24 bits
    of their words are. PyTorch sorts integers by radix, ten times faster than floats on a
    CPU (a million keys: 0.013 s against 0.14 s here), and the order is what loading a mixed
    file spent half its time on."""
    top = rng.random_words(seed, stream, 0, length) >> 8
    return torch.argsort(torch.from_numpy(top.astype(np.int32)), stable=True)


class _Mix(torch.autograd.Function):
    """The whole mixing ``(H S [x; 0])[order] / sqrt(D)`` of a float32 CPU vector in two
    compiled loops (:func:`_mix_forward`, :func:`_mix_backward`): the bits of
    :meth:`SeededMixing.forward`'s separate steps, each computed once per entry, without the
    intermediate tensors those steps allocate and autograd keeps."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, signs: torch.Tensor, order: torch.Tensor
                ) -> torch.Tensor:
        ctx.save_for_backward(signs, order)
        ctx.numbers = x.numel()
        out = x.new_empty(order.numel())
        _kernel("_mix_forward")(x.detach().contiguous().numpy(), signs.numpy(), order.numpy(),
                                _divisor(signs.numel()), np.empty(signs.numel(), np.float32),
                                out.numpy(), KERNEL_BLOCK)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        signs, order = ctx.saved_tensors
        out = grad.new_empty(ctx.numbers)
        _kernel("_mix_backward")(grad.contiguous().numpy(), signs.numpy(), order.numpy(),
                                 _divisor(signs.numel()), np.empty(signs.numel(), np.float32),
                                 out.numpy(), KERNEL_BLOCK)
        return out, None, None


def _divisor(length: int) -> np.float32:
    """``sqrt(D)`` rounded to float32, as PyTorch rounds a Python number dividing a float32
    tensor."""
    return np.float32(math.sqrt(length))


class SeededMixing(nn.Module):
    """``y = P H S x / sqrt(D)`` for x of length ``numbers`` (zero-padded to D), keeping the
    first ``keep`` entries of y; S and P from the random streams ``streams`` (signs,
    permutation keys) of ``seed``."""

    def __init__(self, numbers: int, keep: int, seed: int,
                 streams: tuple[int, int] = (rng.MIXING_SIGN_STREAM,
                                             rng.MIXING_PERMUTATION_STREAM)):
        super().__init__()
        self.length, self.keep = padded_length(numbers), keep
        unit = rng.uniform(seed, streams[0], (self.length,), 1.0)
        self.register_buffer("signs", torch.where(unit < 0, -1.0, 1.0), persistent=False)
        self.register_buffer("order", seeded_order(seed, streams[1], self.length)[:keep],
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 1
                and self.length >= KERNEL_MIN_LENGTH and not torch.compiler.is_compiling()
                and _kernel() is not None):
            return _Mix.apply(x, self.signs, self.order)
        padded = torch.nn.functional.pad(x, (0, self.length - x.numel()))
        return _Permute.apply(_Hadamard.apply(padded * self.signs), self.order) / math.sqrt(
            self.length)
