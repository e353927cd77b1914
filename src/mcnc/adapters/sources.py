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

from mcnc.adapters.config import (
    MCNC_ADAPTER_BETA_LR_SCALE,
    AdapterConfig,
    LoRAAdapterConfig,
    MCNCAdapterConfig,
    NOLAAdapterConfig,
)
from mcnc.baselines.basis import RandomBasis
from mcnc.baselines.subspace import split_coefficients
from mcnc.core import rng
from mcnc.core.generator import Generator
from mcnc.core.initialisation import UNIT_BOUND
from mcnc.core.manifold import ChunkedManifold, HoldsManifold, Region


@dataclass(frozen=True)
class AdaptedLayer:
    """One linear layer an adapter adapts: its name and its ``(out, in)`` features (not a
    :class:`~mcnc.core.layout.Target`, which is one compressed parameter of a whole model)."""

    name: str
    out_features: int
    in_features: int


@dataclass(frozen=True)
class FactorLayout:
    """Offsets of every layer's ``A`` in ``a`` and ``B`` in ``b`` for rank ``rank``."""

    targets: tuple[AdaptedLayer, ...]
    rank: int

    def a_size(self, t: AdaptedLayer) -> int:
        return self.rank * t.in_features

    def b_size(self, t: AdaptedLayer) -> int:
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
    def a_spread(t: AdaptedLayer) -> float:
        """Standard deviation of ``U(-1/sqrt(in), 1/sqrt(in))``, LoRA's initial A of ``t``."""
        return 1 / math.sqrt(3 * t.in_features)

    def a_std(self) -> torch.Tensor:
        """(total_a,) :meth:`a_spread` of every A entry."""
        return torch.cat([torch.full((self.a_size(t),), self.a_spread(t)) for t in self.targets])

    def initial_a(self, seed: int) -> torch.Tensor:
        """(total_a,) LoRA's initial ``A`` factors: uniform draws of unit variance (stream
        ``ADAPTER_A_INIT_STREAM``) times :meth:`a_std`."""
        unit = rng.uniform(seed, rng.ADAPTER_A_INIT_STREAM, (self.total_a,), UNIT_BOUND)
        return unit * self.a_std()

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

    def param_groups(self, lr: float, **rates: float) -> list[dict]:
        """Optimiser groups of the trained tensors: one at ``lr``. MCNC takes a
        ``beta_lr_scale``; other methods refuse any rate of their own."""
        if rates:
            raise ValueError(f"{sorted(rates)}: the {self.method} adapter has no such rate")
        return [{"params": list(self.parameters()), "lr": lr}]


class LoRASource(FactorSource):
    """``a`` and ``b`` are trained directly."""

    method = "lora"

    def __init__(self, config: LoRAAdapterConfig, layout: FactorLayout):
        super().__init__(config, layout)
        self.A = nn.Parameter(layout.initial_a(config.seed))
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


def factor_regions(layout: FactorLayout, config: MCNCAdapterConfig) -> list[Region]:
    """The MCNC adapter's regions of the chunked manifold (mixing streams
    ``ADAPTER_MIXING_STREAM + 2r``, ``+ 2r + 1`` for region r). Two: every ``A`` factor end to
    end, starting with LoRA's spread (mixed: scaled to it per layer) times ``a_start``, then
    every ``B`` factor, starting at zero (or with ``b_start``, at the spread
    ``b_start / sqrt(3 r)``); with ``freeze_a``, only the ``B`` region, its betas' rate
    relative to ``A``'s root-mean-square spread as with both. With
    ``mixing="hadamard-joint"`` one (r = 2): ``A`` then ``B``, mixed together, every entry
    starting at ``joint_start`` times its spread (LoRA's for ``A``, ``1/sqrt(3 r)`` for
    ``B``)."""
    a_spreads = tuple((layout.a_size(t), layout.a_spread(t)) for t in layout.targets)
    stream = rng.ADAPTER_MIXING_STREAM
    if config.mixing == "hadamard-joint":
        spreads = (*a_spreads, (layout.total_b, 1 / math.sqrt(3 * layout.rank)))
        return [Region(layout.total_a + layout.total_b, spreads=spreads,
                       mixing_streams=(stream + 4, stream + 5), start_scale=config.joint_start)]
    b = Region(layout.total_b, mixing_streams=(stream + 2, stream + 3),
               starts_at_zero=not config.b_start,
               start_spread=config.b_start / math.sqrt(3 * layout.rank) or None,
               rate_spread=(Region(layout.total_a, spreads=a_spreads).root_mean_square()
                            if config.freeze_a else None))
    if config.freeze_a:
        return [b]
    return [Region(layout.total_a, spreads=a_spreads, start_mean_squares=layout.a_std().pow(2),
                   mixing_streams=(stream, stream + 1), start_scale=config.a_start), b]


def region_sizes(layout: FactorLayout, config: MCNCAdapterConfig) -> list[int]:
    """The numbers of each region of :func:`factor_regions`, without building them."""
    if config.mixing == "hadamard-joint":
        return [layout.total_a + layout.total_b]
    return [layout.total_b] if config.freeze_a else [layout.total_a, layout.total_b]


class MCNCSource(HoldsManifold, FactorSource):
    """``a`` and ``b`` are the two regions of a :class:`~mcnc.core.manifold.ChunkedManifold`
    (:func:`factor_regions`): each cut into chunks of ``d`` (the last one zero-padded), chunk j
    ``sum_i beta[j, i] * phi(alpha[j, i])``, each region optionally mixed on its own
    (``mixing="hadamard"``). ``a`` starts with ``a_start`` times the spread of LoRA's initial
    ``A``, ``b`` at zero or, with ``b_start``, with the spread ``b_start / sqrt(3 r)``. With
    ``freeze_a``, ``a`` is ``a_start`` times LoRA's seeded initial ``A`` (a buffer, not
    trained) and the manifold has ``b``'s region only."""

    method = "mcnc"

    def __init__(self, config: MCNCAdapterConfig, layout: FactorLayout,
                 generator: Generator | None = None):
        super().__init__(config, layout)
        generator = generator or Generator(config.generator_spec())
        self.joint = config.mixing == "hadamard-joint"
        self.manifold = ChunkedManifold(generator, factor_regions(layout, config), config.m,
                                        "hadamard" if self.joint else config.mixing,
                                        config.seed, config.alpha_init_scale)
        frozen = layout.initial_a(config.seed) * config.a_start if config.freeze_a else None
        self.register_buffer("frozen_a", frozen, persistent=False)

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        return {"mcnc.alpha": self.alpha, "mcnc.beta": self.beta}

    @property
    def generated_size(self) -> int:
        """Length of the generated vector: both regions' chunks, padding included."""
        return self.manifold.generated_size

    def _factors(self, regions: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.joint:
            return torch.split(regions[0], [self.layout.total_a, self.layout.total_b])
        if self.frozen_a is not None:
            return self.frozen_a, regions[0]
        a, b = regions
        return a, b

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The generated chunks (laid end to end) -> ``(a, b)``."""
        return self._factors(self.manifold.assemble(flat))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._factors(self.manifold())

    def param_groups(self, lr: float, **rates) -> list[dict]:
        """alpha at ``lr``, beta at a rate of its own (``rates``: ``beta_lr_scale``, by default
        :data:`~mcnc.adapters.config.MCNC_ADAPTER_BETA_LR_SCALE`, and ``beta_rate``;
        :meth:`~mcnc.core.manifold.ChunkedManifold.param_groups`)."""
        rates = {"beta_lr_scale": MCNC_ADAPTER_BETA_LR_SCALE} | rates
        return self.manifold_groups(lr, rates, super().param_groups)

    def generation_flops(self) -> int:
        return self.manifold.generation_flops()

    def after_step(self) -> None:
        self.manifold.after_step()


def build_source(config: AdapterConfig, layout: FactorLayout, **options) -> FactorSource:
    """The source for ``config``'s method (options: ``max_basis_bytes`` for NOLA)."""
    if isinstance(config, MCNCAdapterConfig):
        return MCNCSource(config, layout)
    if isinstance(config, NOLAAdapterConfig):
        return NOLASource(config, layout, options.get("max_basis_bytes"))
    if isinstance(config, LoRAAdapterConfig):
        return LoRASource(config, layout)
    raise TypeError(f"unknown adapter config {type(config).__name__}")


MIXED_BATCH_BYTES = 1 << 28
"""Mixed MCNC adapters are generated together in batches of at most this many bytes of chunks
(or one adapter): their chunks are mixed into new tensors, so the chunks of a whole group at
once would double the memory of serving hundreds of adapters; unmixed chunks are the factors
themselves."""


def _generation_batches(members: list[MCNCSource]) -> list[list[int]]:
    """Indices of ``members`` generated together: all at once when none is mixed, else
    consecutive runs of at most ``MIXED_BATCH_BYTES`` of chunks."""
    if all(s.manifold.mixings is None for s in members):
        return [list(range(len(members)))]
    batches, size = [[]], 0
    for i, s in enumerate(members):
        nbytes = 4 * s.generated_size
        if batches[-1] and size + nbytes > MIXED_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(i)
        size += nbytes
    return batches


def generate_all(sources: dict[str, FactorSource]
                 ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``(a, b)`` of every source. MCNC sources with the same generator are generated in one
    batched call (their alphas and betas stacked; mixed ones in batches of
    ``MIXED_BATCH_BYTES``), so serving many MCNC adapters costs few generator passes."""
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
        for batch in _generation_batches(members):
            alpha = torch.cat([members[i].alpha for i in batch])
            beta = torch.cat([members[i].beta for i in batch])
            flat = members[0].generator.chunks(alpha, beta).reshape(-1)
            parts = torch.split(flat, [members[i].generated_size for i in batch])
            for i, part in zip(batch, parts, strict=True):
                out[names[i]] = members[i].split(part)
    return out


def d_for_budget(layout: FactorLayout, budget: int, config: MCNCAdapterConfig) -> int:
    """The smallest chunk size d whose MCNC adapter (``config``'s k, m and regions) trains at
    most ``budget`` numbers: ``sum_r ceil(N_r / d) * m * (k + 1) <= budget``."""
    sizes, per_chunk = region_sizes(layout, config), config.m * (config.k + 1)
    if budget < len(sizes) * per_chunk:
        raise ValueError(f"a budget of {budget} cannot pay for {len(sizes)} chunk(s) of "
                         f"{per_chunk} numbers each; raise the budget or lower k or m")

    def cost(d: int) -> int:
        return sum(-(-n // d) for n in sizes) * per_chunk

    low, high = config.k + 1, max(*sizes, config.k + 1)
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if cost(mid) <= budget else (mid + 1, high)
    return low
