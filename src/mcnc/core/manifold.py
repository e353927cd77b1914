"""The chunked manifold: MCNC's parameterisation, shared by compression and adapters.

A generated vector is made of regions (``mcnc.compress``: one, the selected weights end to
end; an MCNC adapter: two, every ``A`` factor, then every ``B`` factor). Region r of ``N_r``
numbers is cut into ``n_r = ceil(N_r / d)`` chunks of d numbers, the last one zero-padded, and
chunk j is

    x_j = sum_(i < m) beta[j, i] * phi(fold(alpha[j, i]))      alpha: (n, m, k), beta: (n, m)

with every region's chunks made in one batched generator call (:meth:`Generator.chunks`).

Unmixed, region r is its chunks end to end with the padding dropped. Mixed
(``mixing="hadamard"``), its chunks end to end go through a seeded randomised Hadamard
transform ``M_r`` of their own (:class:`~mcnc.core.mixing.SeededMixing`, an isometry), and entry i
is scaled by its spread relative to the region's root mean square ``s_r``:

    region_r[i] = (std_i / s_r) * (M_r x)_i,     i < N_r

Initial amplitudes: a region either starts at zero (``beta = 0``: a fine-tuning delta, an
adapter's ``B``) or with the spread of an initialisation. Unmixed, chunk j then gets
``beta_j = sqrt(sum_(i in chunk j) ms_i / m)`` for the mean square ``ms_i`` entry i should
have (m random unit directions add up to a norm of about ``sqrt(m) beta``). Mixed, every beta
of the region is ``s_r sqrt(D_r / (n_r m))`` for the mixing's padded length ``D_r``, so that
the mixed entries have spread ``s_r`` before their scale.

Alphas start uniform on ``[-s L, s L]^k`` (``s``: ``alpha_init_scale``) and are folded back into
the cube after every optimiser step (:meth:`ChunkedManifold.after_step`).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass

import torch
from torch import nn

from mcnc.core.generator import Generator, initial_alpha
from mcnc.core.mixing import SeededMixing, forget_drawn

MIXINGS = ("none", "hadamard")
BETA_RATES = ("relative", "absolute")
MANIFOLD_RATES = ("beta_lr_scale", "beta_rate")
"""The rate settings :meth:`ChunkedManifold.param_groups` takes besides ``lr``."""


def manifold_rates(beta_lr_scale: float = 1.0, beta_rate: str = "relative") -> dict:
    """The rate settings that differ from the defaults, for a training loop to pass on (empty
    for the defaults, which every method accepts)."""
    return ({"beta_lr_scale": beta_lr_scale} if beta_lr_scale != 1.0 else {}) | (
        {"beta_rate": beta_rate} if beta_rate != "relative" else {})


@dataclass(frozen=True, eq=False)
class Region:
    """One part of the generated vector and how it starts."""

    numbers: int
    """``N_r``: entries the region produces."""
    _: KW_ONLY
    spreads: tuple[tuple[int, float], ...] = ()
    """Runs of ``(entries, std)`` covering the region in order: the spread each entry's own
    initialisation has, by which mixed entries are scaled (empty: no scale)."""
    start_mean_squares: torch.Tensor | None = None
    """Unmixed: ``(N_r,)`` the mean square every entry starts with, which the betas match
    (mixed regions start at their spreads times ``start_scale``)."""
    mixing_streams: tuple[int, int] = (0, 0)
    """Random streams (signs, permutation) of the region's mixing."""
    start_scale: float = 1.0
    """The entries start at this fraction of their spreads."""
    starts_at_zero: bool = False
    """The region starts at zero (``beta = 0``): a fine-tuning delta, an adapter's ``B``."""
    start_spread: float | None = None
    """A region without spreads of its own that starts with entries of this root mean square
    instead of at zero (an adapter's ``B`` with ``b_start``): its entries are not scaled and
    it adds nothing to the typical beta, as a region starting at zero."""
    rate_spread: float | None = None
    """A region without spreads of its own whose betas' rate is nevertheless relative to a
    spread (an adapter's ``B`` when its ``A`` is frozen, so that no region knows one): the
    entry spread :attr:`ChunkedManifold.typical_beta` takes for it. Not a scale of its
    entries, nor of its start."""

    def chunks(self, d: int) -> int:
        return -(-self.numbers // d)

    def root_mean_square(self) -> float:
        """``s_r = sqrt(fsum_t(n_t * std_t**2) / N_r)`` over the runs (docs/format.md): the root
        mean square of the entries' spreads, summed exactly in double so that it does not
        depend on how a parallel sum would be split."""
        return math.sqrt(math.fsum(n * s**2 for n, s in self.spreads) / self.numbers)

    def relative_spread(self) -> torch.Tensor:
        """``(N_r,)`` float32 ``std_i / s_r`` (each quotient in double, then rounded)."""
        rms = self.root_mean_square()
        return torch.cat([torch.full((n,), s / rms) for n, s in self.spreads])


_SCALES: weakref.WeakValueDictionary[tuple, torch.Tensor] = weakref.WeakValueDictionary()
"""Entry scales by the region's spreads while a manifold holds them: adapters of one model
layout (hundreds, when serving) share one ``(N_r,)`` tensor."""


def entry_scale(region: Region) -> torch.Tensor:
    """``region.relative_spread()``, or the equal tensor a live manifold already holds."""
    scale = _SCALES.get(region.spreads)
    if scale is None:
        scale = _SCALES[region.spreads] = region.relative_spread()
    return scale


def forget_shared_state() -> None:
    """Forget the frozen state manifolds share (drawn mixings, entry scales), so that the
    next one computes its own, as in a fresh process: what timing a cold load needs."""
    forget_drawn()
    _SCALES.clear()


def chunk_count(regions: list[Region], d: int) -> int:
    """Chunks of ``d`` numbers that cover every region (each padded on its own)."""
    return sum(r.chunks(d) for r in regions)


def expected_shapes(chunks: int, m: int, k: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the trained tensors of a manifold with ``chunks`` chunks."""
    return {"alpha": (chunks, m, k), "beta": (chunks, m)}


class ChunkedManifold(nn.Module):
    """The trained ``alpha`` (n, m, k) and ``beta`` (n, m) of one or more regions and how
    they become the regions' vectors (see the module docstring)."""

    def __init__(self, generator: Generator, regions: list[Region], m: int, mixing: str,
                 seed: int, alpha_init_scale: float = 1.0):
        super().__init__()
        if mixing not in MIXINGS:
            raise ValueError(f"mixing must be one of {MIXINGS}, got {mixing!r}")
        self.generator, self.regions, self.m = generator, list(regions), m
        d = generator.spec.d
        self.counts = [r.chunks(d) for r in self.regions]
        self.mixings = None
        if mixing == "hadamard":
            self.mixings = nn.ModuleList([SeededMixing(n * d, r.numbers, seed, r.mixing_streams)
                                          for r, n in zip(self.regions, self.counts, strict=True)])
            for i, r in enumerate(self.regions):
                scale = entry_scale(r) if r.spreads else None
                self.register_buffer(f"entry_scale_{i}", scale, persistent=False)
        self.alpha = nn.Parameter(initial_alpha(generator.spec, sum(self.counts), m,
                                                alpha_init_scale))
        self.beta = nn.Parameter(torch.cat([self._initial_beta(i)
                                            for i in range(len(self.regions))]))
        self._typical: float | None = None

    def _initial_beta(self, i: int) -> torch.Tensor:
        """(chunks, m) starting amplitudes of region i."""
        region = self.regions[i]
        if region.starts_at_zero:
            return torch.zeros(self.counts[i], self.m)
        if region.start_spread is not None:
            return self.spread_amplitudes(i, region.start_spread)
        amplitudes = self._amplitudes(i, region.start_scale)
        if amplitudes is None:
            raise ValueError("a region that does not start at zero needs the spreads (mixed) or "
                             "the mean squares (unmixed) its entries start with")
        return amplitudes

    def _amplitudes(self, i: int, start_scale: float) -> torch.Tensor | None:
        """(chunks, m) the betas that give region i's entries ``start_scale`` times their
        spreads (module docstring), or None when the region knows no spread."""
        region = self.regions[i]
        if self.mixings is not None:
            if not region.spreads:
                return None
            return self.spread_amplitudes(i, region.root_mean_square() * start_scale)
        if region.start_mean_squares is None:
            return None
        return self._chunk_amplitudes(i, region.start_mean_squares, start_scale**2)

    def spread_amplitudes(self, i: int, spread: float) -> torch.Tensor:
        """(chunks, m) betas that give region i's entries the root mean square ``spread``
        (mixed: over the region, ``spread * sqrt(D / (chunks m))`` since the mixing keeps the
        norm; unmixed: in every chunk). What a region's own spreads and mean squares are not
        changed: its entry scale and the typical beta stay as they were."""
        if self.mixings is not None:
            chunks = self.counts[i]
            return torch.full((chunks, self.m),
                              spread * math.sqrt(self.mixings[i].length / (chunks * self.m)))
        return self._chunk_amplitudes(i, torch.full((self.regions[i].numbers,), spread**2))

    def _chunk_amplitudes(self, i: int, squares: torch.Tensor, factor: float = 1.0
                          ) -> torch.Tensor:
        """(chunks, m) unmixed betas for entries starting with mean squares ``factor *
        squares`` (``squares``: ``(N_r,)``): each chunk's sum of squares shared equally by its
        ``m`` outputs."""
        chunks, d = self.counts[i], self.generator.spec.d
        squares = torch.cat([squares, squares.new_zeros(chunks * d - squares.numel())])
        per_chunk = squares.view(chunks, d).sum(dim=1) * factor
        return (per_chunk / self.m).sqrt().unsqueeze(1).expand(chunks, self.m).clone()

    @property
    def typical_beta(self) -> float:
        """The size betas have when the entries have their spreads (:meth:`param_groups`):
        the root mean square of the betas that give every entry its spread (or the region's
        ``rate_spread``), over the regions that know one (1 when none does), summed exactly
        in double; computed on first use (a model loaded to serve never needs it)."""
        if self._typical is None:
            found = [a for i in range(len(self.regions))
                     if (a := self._rate_amplitudes(i)) is not None]
            squares = (torch.cat([a.flatten() for a in found]).double().pow(2).tolist()
                       if found else [1.0])
            self._typical = math.sqrt(math.fsum(squares) / len(squares))
        return self._typical

    def _rate_amplitudes(self, i: int) -> torch.Tensor | None:
        """(chunks, m) the betas region i's rate is relative to: those that give its entries
        their spreads, or its ``rate_spread``; None when it has neither."""
        spread = self.regions[i].rate_spread
        return self._amplitudes(i, 1.0) if spread is None else self.spread_amplitudes(i, spread)

    @property
    def generated_size(self) -> int:
        """Length of the chunks end to end, padding included."""
        return sum(self.counts) * self.generator.spec.d

    def assemble(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """The chunks, end to end (``generated_size``), -> each region's vector (``N_r``)."""
        d = self.generator.spec.d
        out = []
        for i, (region, x) in enumerate(zip(self.regions, torch.split(
                flat, [n * d for n in self.counts]), strict=True)):
            if self.mixings is None:
                out.append(x[:region.numbers])
                continue
            out.append(self.mixings[i](x, getattr(self, f"entry_scale_{i}")))
        return out

    def forward(self) -> list[torch.Tensor]:
        """Every region's vector, from the current alphas and betas."""
        return self.assemble(self.generator.chunks(self.alpha, self.beta).reshape(-1))

    @torch.no_grad()
    def after_step(self) -> None:
        """Reflect the alphas into ``[-L, L]^k`` in place; the generated vector is unchanged."""
        self.alpha.copy_(self.generator.fold(self.alpha))

    def folded_alpha(self) -> torch.Tensor:
        """The alphas inside the cube, as files store them."""
        with torch.no_grad():
            return self.generator.fold(self.alpha)

    def param_groups(self, lr: float, beta_lr_scale: float = 1.0,
                     beta_rate: str = "relative") -> list[dict]:
        """Optimiser groups: alpha at ``lr``, beta at ``lr * beta_lr_scale * b`` where ``b`` is
        :attr:`typical_beta` (``beta_rate="relative"``, the default) or 1 (``"absolute"``).

        Why relative: an Adam step moves every beta by about its rate, and a chunk's d entries
        by that over ``sqrt(d)``. At a larger budget over the same weights chunks are shorter,
        so an absolute rate moves the weights further per step (``sqrt(n / D)`` for n chunks of
        D numbers) and diverges (LeNet-5 at 10,000 numbers with the rate swept at 1,000). The
        typical beta is about ``spread * sqrt(d / m)``, so the relative rate moves each entry by
        about ``lr * spread / sqrt(m)`` at every budget, as alpha's rate already does.
        """
        if beta_rate not in BETA_RATES:
            raise ValueError(f"beta_rate must be one of {BETA_RATES}, got {beta_rate!r}")
        beta_lr = lr * beta_lr_scale * (self.typical_beta if beta_rate == "relative" else 1.0)
        if beta_lr == lr:
            return [{"params": [self.alpha, self.beta], "lr": lr}]
        return [{"params": [self.alpha], "lr": lr}, {"params": [self.beta], "lr": beta_lr}]

    def generation_flops(self) -> int:
        """Floating-point operations of one :meth:`forward`: the generator, the amplitudes
        and, mixed, the signs, butterflies, normalisation and scale."""
        spec = self.generator.spec
        vectors = sum(self.counts) * self.m
        mixing = 0 if self.mixings is None else sum(
            mix.length * (mix.length.bit_length() + 2) for mix in self.mixings)
        return vectors * (spec.flops_per_vector() + 2 * spec.d) + mixing

    def extra_repr(self) -> str:
        return (f"chunks={sum(self.counts)}, m={self.m}, "
                f"mixing={'none' if self.mixings is None else 'hadamard'}")


class HoldsManifold:
    """For a module whose trained numbers are a :class:`ChunkedManifold` in ``self.manifold``
    (an MCNC model, an MCNC adapter): its generator, alpha and beta as its own attributes."""

    manifold: ChunkedManifold

    def manifold_groups(self, lr: float, rates: dict, refuse: Callable[..., list[dict]]
                        ) -> list[dict]:
        """:meth:`ChunkedManifold.param_groups` with ``rates``; rates it does not take go to
        ``refuse`` (the owner's base class, which names them in its error)."""
        unknown = {k: v for k, v in rates.items() if k not in MANIFOLD_RATES}
        if unknown:
            return refuse(lr, **unknown)
        return self.manifold.param_groups(lr, **rates)

    @property
    def generator(self) -> Generator:
        return self.manifold.generator

    @property
    def alpha(self) -> nn.Parameter:
        return self.manifold.alpha

    @property
    def beta(self) -> nn.Parameter:
        return self.manifold.beta
