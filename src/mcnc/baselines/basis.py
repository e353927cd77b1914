"""Frozen random linear bases, regenerated from a seed: the shared core of PRANC and NOLA.

A basis maps ``n`` coefficients to ``size`` numbers,

    v = P c,   P[i, j] = scale[i] * u[j, i] / sqrt(n),   u ~ U(-sqrt(3), sqrt(3)) (unit variance)

where ``u`` is word ``j * size + i`` of Philox stream ``stream`` under ``seed`` (so column j of
``P`` is a contiguous window of the stream and any block of columns can be made on its own).
With unit-variance coefficients every entry of ``v`` has standard deviation ``scale[i]``.

``P`` is kept in memory when it fits ``max_bytes``; otherwise it is regenerated block by block
in both the forward and the backward pass, so memory stays bounded whatever its size (a dense
PRANC basis for ResNet-20 with 10k coefficients would take about 11 GB).
"""

from __future__ import annotations

import math

import torch

from mcnc.core import rng
from mcnc.core.initialisation import UNIT_BOUND

DEFAULT_MAX_BYTES = 4 << 30
BLOCK_BYTES = 64 << 20


class RandomBasis:
    """The matrix ``P`` (``size x n``) of one seeded random basis; see the module docstring."""

    def __init__(self, seed: int, stream: int, size: int, n: int, scale: torch.Tensor,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        if n < 1 or size < 1:
            raise ValueError(f"a basis needs at least one coefficient and one row, got "
                             f"n={n}, size={size}")
        self.seed, self.stream, self.size, self.n = seed, stream, size, n
        self.scale = scale.float().reshape(size) / math.sqrt(n)
        self.block = max(1, BLOCK_BYTES // (4 * size))
        self.cached = 4 * size * n <= max_bytes
        self._columns: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        return 4 * self.size * self.n

    def column_blocks(self):
        """``(start, u)`` for consecutive blocks of columns: ``u`` is the ``(columns, size)``
        float32 block starting at column ``start``, at most ``BLOCK_BYTES`` unless cached.
        Streamed blocks are generated into one buffer, valid until the next block."""
        if self.cached:
            if self._columns is None:
                self._columns = self._generate(torch.empty(self.n, self.size), 0)
            yield 0, self._columns
            return
        buffer = torch.empty(min(self.block, self.n), self.size)
        for start in range(0, self.n, self.block):
            count = min(self.block, self.n - start)
            yield start, self._generate(buffer[:count], start)

    def _generate(self, out: torch.Tensor, start: int) -> torch.Tensor:
        return rng.uniform_into(out, self.seed, self.stream, UNIT_BOUND, start=start * self.size)

    def apply(self, c: torch.Tensor) -> torch.Tensor:
        """``P c`` for coefficients ``c`` of shape (n,); differentiable in ``c``."""
        if self.scale.device != c.device:
            self.to(c.device)
        return _BasisProduct.apply(c, self)

    def to(self, device: torch.device) -> RandomBasis:
        self.scale = self.scale.to(device)
        if self._columns is not None:
            self._columns = self._columns.to(device)
        return self


class _BasisProduct(torch.autograd.Function):
    """``v = P c`` and ``dc = P^T dv``, with ``P`` made (or read from memory) block by block."""

    @staticmethod
    def forward(ctx, c: torch.Tensor, basis: RandomBasis) -> torch.Tensor:
        ctx.basis = basis
        out = torch.zeros(basis.size, dtype=torch.float32, device=c.device)
        for start, u in basis.column_blocks():
            out.addmv_(u.to(c.device).T, c[start : start + len(u)].float())
        return out.mul_(basis.scale).to(c.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        basis = ctx.basis
        scaled = grad.float() * basis.scale
        pieces = [u.to(grad.device) @ scaled for _, u in basis.column_blocks()]
        return torch.cat(pieces).to(grad.dtype), None
