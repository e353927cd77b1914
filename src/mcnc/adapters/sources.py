"""Where an adapter's factors come from: one module per method holding its trained tensors.

An adapter's factors are two flat vectors: ``a`` holds every targeted layer's ``A`` (r, in),
row-major, end to end in layer order; ``b`` every ``B`` (out, r). A source computes ``(a, b)``
from its trained tensors; :func:`generate_all` computes several adapters' vectors at once,
with one generator call for all MCNC adapters that share a generator.

Initial values follow LoRA: ``A`` entries have the spread of ``nn.Linear``'s default
initialisation, ``U(-1/sqrt(in), 1/sqrt(in))``, and ``B`` is zero, so an adapter starts as the
identity on the base model while gradients reach every trained number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mcnc import rng
from mcnc.adapters.config import (
    AdapterConfig,
    LoRAAdapterConfig,
    MCNCAdapterConfig,
    NOLAAdapterConfig,
)
from mcnc.baselines.basis import RandomBasis
from mcnc.baselines.subspace import split_coefficients
from mcnc.generator import Generator, initial_alpha
from mcnc.initialisation import UNIT_BOUND
from mcnc.mixing import SeededMixing


@dataclass(frozen=True)
class TargetShape:
    """One adapted layer: its name and its ``(out, in)`` features."""

    name: str
    out_features: int
    in_features: int


@dataclass(frozen=True)
class FactorLayout:
    """Offsets of every layer's ``A`` in ``a`` and ``B`` in ``b`` for rank ``rank``."""

    targets: tuple[TargetShape, ...]
    rank: int

    def a_size(self, t: TargetShape) -> int:
        return self.rank * t.in_features

    def b_size(self, t: TargetShape) -> int:
        return t.out_features * self.rank

    @property
    def total_a(self) -> int:
        return sum(self.a_size(t) for t in self.targets)

    @property
    def total_b(self) -> int:
        return sum(self.b_size(t) for t in self.targets)

    def chunks(self, d: int) -> tuple[int, int]:
        """Chunks of ``d`` numbers that cover ``a`` and ``b`` (each region padded on its own)."""
        return -(-self.total_a // d), -(-self.total_b // d)

    def matrices(self, a: torch.Tensor, b: torch.Tensor
                 ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Layer name -> its ``A`` (r, in) and ``B`` (out, r), views of ``a`` and ``b``.
        (One split per vector: its backward is a single concatenation.)"""
        As = torch.split(a, [self.a_size(t) for t in self.targets])
        Bs = torch.split(b, [self.b_size(t) for t in self.targets])
        return {t.name: (A.view(self.rank, t.in_features), B.view(t.out_features, self.rank))
                for t, A, B in zip(self.targets, As, Bs, strict=True)}

    @staticmethod
    def a_spread(t: TargetShape) -> float:
        """Standard deviation of ``U(-1/sqrt(in), 1/sqrt(in))``, LoRA's initial A of ``t``."""
        return 1 / math.sqrt(3 * t.in_features)

    def a_std(self) -> torch.Tensor:
        """(total_a,) :meth:`a_spread` of every A entry."""
        return torch.cat([torch.full((self.a_size(t),), self.a_spread(t)) for t in self.targets])

    def b_std(self) -> torch.Tensor:
        """(total_b,) the spread an ``nn.Linear(rank, out)`` would have: the scale of the
        random directions B moves along (B itself starts at zero)."""
        return torch.full((self.total_b,), 1 / math.sqrt(3 * self.rank))


class FactorSource(nn.Module):
    """Trained tensors of one adapter and how they become its factor vectors."""

    method: str

    def __init__(self, config: AdapterConfig, layout: FactorLayout):
        super().__init__()
        self.config, self.layout = config, layout

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, b)``: (total_a,) and (total_b,) float32 vectors."""
        raise NotImplementedError

    def generation_flops(self) -> int:
        """Floating-point operations to compute :meth:`factors` once (0 when stored)."""
        return 0

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """Trained tensors by the name they have in the adapter file."""
        return {f"{self.method}.{name}": p for name, p in self.named_parameters()}

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(t.shape) for name, t in self.stored_tensors().items()}

    def after_step(self) -> None:
        """Called by training loops after each optimiser step."""


class LoRASource(FactorSource):
    """``a`` and ``b`` are trained directly."""

    method = "lora"

    def __init__(self, config: LoRAAdapterConfig, layout: FactorLayout):
        super().__init__(config, layout)
        unit = rng.uniform(config.seed, rng.ADAPTER_A_INIT_STREAM, (layout.total_a,), UNIT_BOUND)
        self.A = nn.Parameter(unit * layout.a_std())
        self.B = nn.Parameter(torch.zeros(layout.total_b))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.A, self.B


class NOLASource(FactorSource):
    """Every factor is ``P_p c_p`` with its own seeded random basis ``P_p``; the coefficients of
    the ``A`` factors start uniform with unit variance, those of ``B`` at zero."""

    method = "nola"

    def __init__(self, config: NOLAAdapterConfig, layout: FactorLayout,
                 max_basis_bytes: int | None = None):
        super().__init__(config, layout)
        sizes = ([layout.a_size(t) for t in layout.targets]
                 + [layout.b_size(t) for t in layout.targets])
        counts = split_coefficients(sizes, config.coefficients)
        std = torch.cat([layout.a_std(), layout.b_std()])
        extra = {} if max_basis_bytes is None else {"max_bytes": max_basis_bytes}
        self.bases, offset = [], 0
        for p, (size, n) in enumerate(zip(sizes, counts, strict=True)):
            self.bases.append(RandomBasis(config.seed, rng.NOLA_ADAPTER_STREAM + p, size, n,
                                          std[offset : offset + size], **extra))
            offset += size
        c = rng.uniform(config.seed, rng.ADAPTER_A_INIT_STREAM, (config.coefficients,), UNIT_BOUND)
        c[sum(counts[: len(layout.targets)]) :] = 0  # B's coefficients
        self.coefficients = nn.Parameter(c)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        pieces, start = [], 0
        for basis in self.bases:
            pieces.append(basis.apply(self.coefficients[start : start + basis.n]))
            start += basis.n
        half = len(self.layout.targets)
        return torch.cat(pieces[:half]), torch.cat(pieces[half:])

    def generation_flops(self) -> int:
        return sum(2 * b.size * b.n for b in self.bases)


class MCNCSource(FactorSource):
    """``a`` and ``b`` are each cut into chunks of ``d`` (the last one zero-padded), chunk j is
    ``sum_i beta[j, i] * phi(alpha[j, i])``. Chunks of ``a`` start with the norm of LoRA's
    initial ``A``; chunks of ``b`` with ``beta = 0``.

    With ``mixing="hadamard"`` the chunks of each region, end to end (x_a, x_b), are mixed
    before use: ``a = (std_i / s) * M_a x_a`` and ``b = M_b x_b``, where ``M`` is
    :class:`~mcnc.mixing.SeededMixing` (an isometry; streams ``ADAPTER_MIXING_STREAM + 2r``,
    ``+ 2r + 1`` for region r), std_i the spread of LoRA's initial A at entry i and s their
    root mean square; A's betas then start at ``s sqrt(D_a / (n_a m))`` for ``n_a`` chunks
    padded to ``D_a`` numbers, so that ``a`` starts with LoRA's spread per layer."""

    method = "mcnc"

    def __init__(self, config: MCNCAdapterConfig, layout: FactorLayout,
                 generator: Generator | None = None):
        super().__init__(config, layout)
        self.generator = generator or Generator(config.generator_spec())
        d = config.d
        self.chunks_a, self.chunks_b = layout.chunks(d)
        self.mixings = None
        if config.mixing == "hadamard":
            streams = [(rng.ADAPTER_MIXING_STREAM + 2 * r, rng.ADAPTER_MIXING_STREAM + 2 * r + 1)
                       for r in (0, 1)]
            self.mixings = nn.ModuleList([
                SeededMixing(self.chunks_a * d, layout.total_a, config.seed, streams[0]),
                SeededMixing(self.chunks_b * d, layout.total_b, config.seed, streams[1])])
            self.a_spread = _root_mean_square(layout)
            scale = [torch.full((layout.a_size(t),), layout.a_spread(t) / self.a_spread)
                     for t in layout.targets]  # in double, then fl32
            self.register_buffer("a_scale", torch.cat(scale), persistent=False)
        self.alpha = nn.Parameter(initial_alpha(self.generator.spec, self.chunks_a + self.chunks_b,
                                                 config.m))
        self.beta = nn.Parameter(self._initial_beta())

    def _initial_beta(self) -> torch.Tensor:
        c, d = self.config, self.config.d
        if self.mixings is not None:
            mixed = self.a_spread * math.sqrt(self.mixings[0].length / (self.chunks_a * c.m))
            beta_a = torch.full((self.chunks_a,), mixed)
        else:
            var = self.layout.a_std().pow(2)
            var = torch.cat([var, var.new_zeros(self.chunks_a * d - var.numel())])
            beta_a = (var.view(self.chunks_a, d).sum(1) / c.m).sqrt()
        beta = torch.cat([beta_a, torch.zeros(self.chunks_b)])
        return beta.unsqueeze(1).expand(-1, c.m).clone()

    @property
    def generated_size(self) -> int:
        """Length of the generated vector: both regions' chunks, padding included."""
        return (self.chunks_a + self.chunks_b) * self.config.d

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The generated chunks (laid end to end) -> ``(a, b)`` without padding (unmixed:
        views of one split, so the backward pass assembles the gradient in one
        concatenation; mixed: each region through its mixing)."""
        d, total_a, total_b = self.config.d, self.layout.total_a, self.layout.total_b
        if self.mixings is not None:
            x_a, x_b = torch.split(flat, [self.chunks_a * d, self.chunks_b * d])
            return self.mixings[0](x_a) * self.a_scale, self.mixings[1](x_b)
        a, _, b, _ = torch.split(flat, [total_a, self.chunks_a * d - total_a,
                                        total_b, self.chunks_b * d - total_b])
        return a, b

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.generator.chunks(self.alpha, self.beta).reshape(-1))

    def generation_flops(self) -> int:
        spec = self.generator.spec
        vectors = (self.chunks_a + self.chunks_b) * self.config.m
        mixing = 0 if self.mixings is None else sum(  # signs, butterflies, 1/sqrt(D), scale
            mix.length * (mix.length.bit_length() + 2) for mix in self.mixings)
        return vectors * (spec.flops_per_vector() + 2 * spec.d) + mixing

    def after_step(self) -> None:
        with torch.no_grad():
            self.alpha.copy_(self.generator.fold(self.alpha))


def _root_mean_square(layout: FactorLayout) -> float:
    """Root mean square of the A entries' initial spreads, summed per target in double so
    that it does not depend on how a parallel sum would be split."""
    return math.sqrt(math.fsum(layout.a_size(t) * layout.a_spread(t) ** 2
                               for t in layout.targets) / layout.total_a)


def build_source(config: AdapterConfig, layout: FactorLayout, **options) -> FactorSource:
    """The source for ``config``'s method (options: ``max_basis_bytes`` for NOLA)."""
    if isinstance(config, MCNCAdapterConfig):
        return MCNCSource(config, layout)
    if isinstance(config, NOLAAdapterConfig):
        return NOLASource(config, layout, options.get("max_basis_bytes"))
    if isinstance(config, LoRAAdapterConfig):
        return LoRASource(config, layout)
    raise TypeError(f"unknown adapter config {type(config).__name__}")


def generate_all(sources: dict[str, FactorSource]
                 ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``(a, b)`` of every source. MCNC sources with the same generator are generated in one
    batched call (their alphas and betas stacked), so serving many MCNC adapters costs one
    generator pass."""
    out, groups = {}, {}
    for name, source in sources.items():
        if isinstance(source, MCNCSource) and not source.generator.fitted:
            key = (source.generator.spec, source.config.m, source.alpha.device)
            groups.setdefault(key, []).append(name)
        else:
            out[name] = source.factors()
    for names in groups.values():
        if len(names) == 1:
            out[names[0]] = sources[names[0]].factors()
            continue
        members = [sources[n] for n in names]
        alpha = torch.cat([s.alpha for s in members])
        beta = torch.cat([s.beta for s in members])
        flat = members[0].generator.chunks(alpha, beta).reshape(-1)
        parts = torch.split(flat, [s.generated_size for s in members])
        for name, s, part in zip(names, members, parts, strict=True):
            out[name] = s.split(part)
    return out


def d_for_budget(layout: FactorLayout, budget: int, k: int, m: int = 1) -> int:
    """The smallest chunk size d whose MCNC adapter trains at most ``budget`` numbers:
    ``(ceil(total_a / d) + ceil(total_b / d)) * m * (k + 1) <= budget``."""
    per_chunk = m * (k + 1)
    if budget < 2 * per_chunk:
        raise ValueError(f"a budget of {budget} cannot pay for the two chunks (A and B) of "
                         f"{per_chunk} numbers each; raise the budget or lower k or m")

    def cost(d: int) -> int:
        return sum(layout.chunks(d)) * per_chunk

    low, high = k + 1, max(layout.total_a, layout.total_b, k + 1)
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if cost(mid) <= budget else (mid + 1, high)
    return low
