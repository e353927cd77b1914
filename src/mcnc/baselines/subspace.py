"""Random linear subspaces: PRANC (Nooralinejad et al., ICCV 2023) and NOLA (Koohpayegani et
al., ICLR 2024), the linear counterparts of MCNC.

PRANC: the whole flat vector of selected weights is one point of a random affine subspace,

    theta = theta0 + P c,       P: (N x n) frozen, seeded;  c: (n,) trained

with ``theta0`` a seeded default initialisation (scratch) or the pretrained weights (delta).
NOLA: every matrix is ``B @ A`` of rank r, and each factor (and each small parameter kept
whole) is its own combination ``P_p c_p`` of seeded random bases; the coefficients are split
over the pieces in proportion to their sizes. Bases are :class:`~mcnc.baselines.basis.RandomBasis`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from mcnc.baselines.basis import DEFAULT_MAX_BYTES, RandomBasis
from mcnc.core import rng
from mcnc.core.config import FactoredSelection, Selection
from mcnc.core.errors import FormatError
from mcnc.core.initialisation import UNIT_BOUND, element_std, seeded_init
from mcnc.core.layout import Layout, plan_layout
from mcnc.core.limits import MAX_SEED, check_positive_ints, check_work, is_int
from mcnc.core.reparam import Reparameterized, check_float32, flat_values


@dataclass(frozen=True)
class PRANCConfig(Selection):
    """PRANC: ``coefficients`` trained numbers span a seeded random subspace of all selected
    weights (``mode`` ``"scratch"`` or ``"delta"``)."""

    coefficients: int = 1000
    """Trained coefficients n (the paper's budget)."""
    seed: int = 0
    """Seed of the basis (and of theta0 in scratch mode)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_ints(coefficients=self.coefficients)


@dataclass(frozen=True)
class NOLAConfig(PRANCConfig, FactoredSelection):
    """NOLA: rank-``rank`` factors, each a combination of seeded random bases; ``coefficients``
    is the total over all factors."""

    rank: int = 64
    """Rank r of the factors (64, as the MCNC paper's NOLA runs on ResNets)."""


def split_coefficients(sizes: list[int], total: int) -> list[int]:
    """Share ``total`` coefficients over pieces in proportion to their sizes, at least 1 each
    (largest remainders get the leftovers)."""
    if total < len(sizes):
        raise ValueError(f"{total} coefficients cannot cover {len(sizes)} pieces (factors and "
                         f"small parameters); use at least {len(sizes)} or select fewer "
                         "parameters")
    extra = total - len(sizes)
    whole = sum(sizes)
    shares = [extra * s / whole for s in sizes]
    counts = [1 + int(x) for x in shares]
    order = sorted(range(len(sizes)), key=lambda i: int(shares[i]) - shares[i])
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


class SubspaceModel(Reparameterized):
    """Selected weights as ``theta0 + sum_p P_p c_p`` over pieces of the flat vector."""

    basis_stream: ClassVar[int]
    config_class: ClassVar[type[PRANCConfig]]

    def __init__(self, base: nn.Module, layout: Layout, config: PRANCConfig,
                 max_basis_bytes: int = DEFAULT_MAX_BYTES):
        params = dict(base.named_parameters())
        theta0 = self._theta0(layout, config, params)
        super().__init__(base, layout, config, theta0)
        std = element_std(layout)
        self.bases = []
        for p, (offset, size, n) in enumerate(self.pieces(layout, config)):
            self.bases.append(RandomBasis(config.seed, self.basis_stream + p, size, n,
                                          std[offset : offset + size], max_basis_bytes))
        self.coefficients = nn.Parameter(self._initial_coefficients())
        self._refresh()

    # -- what PRANC and NOLA define -------------------------------------------------------------
    @staticmethod
    def pieces(layout: Layout, config: PRANCConfig) -> list[tuple[int, int, int]]:
        """``(offset, size, coefficients)`` of each piece, covering the flat vector in order."""
        raise NotImplementedError

    @staticmethod
    def _theta0(layout: Layout, config: PRANCConfig, params: dict) -> torch.Tensor | None:
        return flat_values(layout, params) if config.mode == "delta" else None

    def _initial_coefficients(self) -> torch.Tensor:
        return torch.zeros(self.config.coefficients)

    # -- the shared part ------------------------------------------------------------------------
    def method_tensors(self) -> dict[str, torch.Tensor]:
        return {"coefficients": self.coefficients}

    def generated_flat(self) -> torch.Tensor:
        pieces, start = [], 0
        for basis in self.bases:
            pieces.append(basis.apply(self.coefficients[start : start + basis.n]))
            start += basis.n
        return torch.cat(pieces)

    def file_metadata(self) -> dict:
        return {"mode": self.config.mode, "coefficients": self.config.coefficients,
                "seed": self.config.seed, "prng": rng.PRNG_NAME}

    @classmethod
    def config_from_file(cls, meta: dict) -> PRANCConfig:
        if meta["prng"] != rng.PRNG_NAME:
            raise FormatError(f"unknown pseudo-random generator {meta['prng']!r}")
        if not is_int(meta["seed"], 0, MAX_SEED):
            raise FormatError(f"seed must be an integer in [0, 2**64), got {meta['seed']!r}")
        return cls.config_class(mode=meta["mode"], coefficients=meta["coefficients"],
                                seed=meta["seed"], train_dense=meta["train_dense"])

    @classmethod
    def expected_tensors(cls, config, layout, meta) -> dict[str, tuple[int, ...]]:
        return {f"{cls.method}.coefficients": (config.coefficients,)}

    @classmethod
    def check_tensors(cls, config, layout, tensors) -> None:
        """The bases must be within the regeneration limit (and, for NOLA, there must be a
        coefficient for every piece: :func:`split_coefficients` says so otherwise)."""
        check_work(sum(size * n for _, size, n in cls.pieces(layout, config)),
                   "random numbers")

    @classmethod
    def from_file(cls, skeleton, layout, config, tensors) -> SubspaceModel:
        device = check_float32(skeleton, layout)
        return cls(skeleton, layout, config).to(device)

    def extra_repr(self) -> str:
        return (f"mode={self.config.mode}, coefficients={self.config.coefficients}, "
                f"pieces={len(self.bases)}, generated={self.layout.total}, "
                f"basis_bytes={sum(b.nbytes for b in self.bases):,}")


class PRANCModel(SubspaceModel):
    """PRANC: one random basis over all selected weights; coefficients start at 0."""

    method = "pranc"
    config_class = PRANCConfig
    basis_stream = rng.PRANC_BASIS_STREAM

    @staticmethod
    def pieces(layout, config):
        return [(0, layout.total, config.coefficients)]

    @staticmethod
    def _theta0(layout, config, params):
        if config.mode == "delta":
            return flat_values(layout, params)
        return seeded_init(layout, config.seed, rng.THETA0_STREAM)


class NOLAModel(SubspaceModel):
    """NOLA: a random basis per factor. Scratch: all coefficients start random (factors at the
    default scale). Delta: ``B`` and unfactored pieces start at 0, so training starts at the
    pretrained model."""

    method = "nola"
    config_class = NOLAConfig
    basis_stream = rng.NOLA_BASIS_STREAM

    @staticmethod
    def pieces(layout, config):
        spans = []
        for t in layout.targets:
            if t.rank is None:
                spans.append((t.offset, t.size))
            else:
                a = t.rank * t.matrix_shape[1]
                spans += [(t.offset, a), (t.offset + a, t.size - a)]
        counts = split_coefficients([size for _, size in spans], config.coefficients)
        return [(o, s, n) for (o, s), n in zip(spans, counts, strict=True)]

    def _initial_coefficients(self) -> torch.Tensor:
        c = rng.uniform(self.config.seed, rng.COEFFICIENT_INIT_STREAM, (self.config.coefficients,),
                        UNIT_BOUND)
        if self.config.mode == "delta":
            start = 0
            targets = {t.offset: t for t in self.layout.targets}
            for (offset, _, n) in self.pieces(self.layout, self.config):
                if offset not in targets or targets[offset].rank is None:
                    c[start : start + n] = 0  # a B factor or a whole small parameter
                start += n
        return c

    def file_metadata(self) -> dict:
        return {**super().file_metadata(), "rank": self.config.rank}

    @classmethod
    def config_from_file(cls, meta: dict) -> NOLAConfig:
        base = super().config_from_file(meta)
        return NOLAConfig(**{**base.__dict__, "rank": meta["rank"]})


def pranc(model: nn.Module, config: PRANCConfig | None = None,
          max_basis_bytes: int = DEFAULT_MAX_BYTES) -> PRANCModel:
    """Reparameterise ``model`` with PRANC (in place, like :func:`mcnc.compress`)."""
    return _wrap(PRANCModel, model, config or PRANCConfig(), max_basis_bytes)


def nola(model: nn.Module, config: NOLAConfig | None = None,
         max_basis_bytes: int = DEFAULT_MAX_BYTES) -> NOLAModel:
    """Reparameterise ``model`` with NOLA (in place, like :func:`mcnc.compress`)."""
    return _wrap(NOLAModel, model, config or NOLAConfig(), max_basis_bytes)


def _wrap(cls: type[SubspaceModel], model: nn.Module, config: PRANCConfig,
          max_basis_bytes: int) -> SubspaceModel:
    if isinstance(model, Reparameterized):
        raise ValueError("this model is already compressed; start from the original model")
    layout = plan_layout(model, config)
    device = check_float32(model, layout)
    return cls(model, layout, config, max_basis_bytes).to(device)
