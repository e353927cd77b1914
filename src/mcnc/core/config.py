"""Configurations: which parameters a method reparameterises (:class:`Selection`) and MCNC's own
settings (:class:`MCNCConfig`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from typing import ClassVar

from torch import nn

from mcnc.core.generator import GeneratorSpec
from mcnc.core.limits import check_positive_ints, is_number
from mcnc.core.manifold import MIXINGS

FACTOR_RULES = ("always", "when-smaller")
"""How low-rank methods choose what to factor (see :func:`mcnc.core.layout.target_rank`)."""
BASE_TARGET_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Embedding,
)


def default_target_types() -> tuple[type[nn.Module], ...]:
    """The module types compressed by default: Linear, Conv1d/2d/3d, Embedding, and
    transformers' ``Conv1D`` (GPT-2's linear layers) once transformers is loaded (a model
    holding one cannot exist before; mcnc does not import transformers for it)."""
    utils = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(utils, "Conv1D", None)
    return BASE_TARGET_TYPES + ((conv1d,) if isinstance(conv1d, type) else ())


@dataclass(frozen=True)
class Selection:
    """What a compression method takes over, shared by MCNC and the baselines.

    Selected parameters are removed from their modules and computed from the method's few
    trainable numbers; everything else (e.g. normalisation layers) stays dense.
    """

    MODES: ClassVar[tuple[str, ...]] = ("scratch", "delta")

    mode: str = "scratch"
    """``"scratch"``: theta = generated (training from scratch).
    ``"delta"``: theta = theta0 + generated, theta0 frozen (fine-tuning).
    ``"lowrank"`` (where the method supports it): every matrix or conv kernel is ``B @ A`` of
    rank ``rank`` and the factors are generated (the paper's "w/ LoRA")."""
    target_types: tuple[type[nn.Module], ...] = field(default_factory=default_target_types)
    """Module types whose ``weight`` (and ``bias``) are compressed; others stay dense."""
    target_regex: str | None = None
    """If set, compress exactly the parameters whose full name matches this regex
    (``re.search``) instead of selecting by ``target_types``."""
    include_bias: bool = True
    """Also compress the ``bias`` of target modules."""
    train_dense: bool | None = None
    """Whether parameters left dense (e.g. normalisation layers) are trained. ``None``: yes in
    ``scratch``/``lowrank``, no in ``delta`` (they belong to the frozen base)."""
    factor_rule: str = "always"
    """Which matrices and conv kernels a low-rank method factors: ``"always"`` (every one, at
    ``min(rank, out, in)``, even where the factors hold more numbers than the tensor, as in
    the paper's "w/ LoRA") or ``"when-smaller"`` (only where ``rank * (out + in) < out * in``).
    Vectors (biases) are never factored. Unused by methods that do not factor."""

    def __post_init__(self) -> None:
        if self.mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {self.mode!r}")
        if self.factor_rule not in FACTOR_RULES:
            raise ValueError(f"factor_rule must be one of {FACTOR_RULES}, got "
                             f"{self.factor_rule!r}")

    @property
    def trains_dense(self) -> bool:
        return self.mode != "delta" if self.train_dense is None else self.train_dense

    @property
    def factor_rank(self) -> int | None:
        """Rank of the low-rank factors, or ``None`` when parameters are generated directly."""
        return None


@dataclass(frozen=True)
class FactoredSelection(Selection):
    """A selection whose matrices are stored as rank-``rank`` factors ``B @ A``."""

    rank: int = 8
    """Rank r of the factors."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_ints(rank=self.rank)

    @property
    def factor_rank(self) -> int:
        return self.rank


@dataclass(frozen=True)
class MCNCConfig(GeneratorSpec, Selection):
    """Configuration of :func:`mcnc.compress`: the generator's fields (``k``, ``d``, ``L``,
    ``width``, ``depth``, ``activation``, ``hidden_gain``, ``seed``; see
    :class:`~mcnc.core.generator.GeneratorSpec`), what to compress (:class:`Selection`) and how.

    The selected parameters are flattened in ``model.named_parameters()`` order, concatenated,
    zero-padded to a multiple of ``d`` and cut into chunks; chunk j is
    ``sum_i beta[j, i] * phi(alpha[j, i])`` for ``i < m``. Trainable numbers per chunk:
    ``m * (k + 1)``. The seed also draws the initial alphas. Learning rates for alpha are
    relative to its raw scale, [-L, L].
    """

    MODES: ClassVar[tuple[str, ...]] = ("scratch", "delta", "lowrank")

    m: int = 1
    """Generator outputs summed per chunk (the paper's m)."""
    rank: int = 32
    """Rank of the factors in ``"lowrank"`` mode (the paper: 64 for ResNets, 32 for DeiT;
    results/lowrank-rank measures the choice)."""
    alpha_init_scale: float = 1.0
    """Initial alphas are uniform on ``[-s L, s L]^k`` for this ``s`` (1: the whole cube)."""
    mixing: str = "hadamard"
    """``"hadamard"`` mixes the generated vector with a seeded randomised Hadamard transform,
    so that every chunk moves weights all over the network, and scales each entry to its
    layer's default spread (see :mod:`mcnc.core.manifold`; format version 2 files).
    ``"none"``: each chunk generates its own d weights, as in the paper (version 1)."""

    def __post_init__(self) -> None:
        GeneratorSpec.__post_init__(self)
        Selection.__post_init__(self)
        check_positive_ints(m=self.m, rank=self.rank)
        if self.mixing not in MIXINGS:
            raise ValueError(f"mixing must be one of {MIXINGS}, got {self.mixing!r}")
        if not is_number(self.alpha_init_scale, 0, 1 + 1e-12):
            raise ValueError(f"alpha_init_scale must be in (0, 1], got "
                             f"{self.alpha_init_scale!r}")

    def generator_spec(self) -> GeneratorSpec:
        """The :class:`GeneratorSpec` part of this config."""
        return GeneratorSpec(**{f.name: getattr(self, f.name) for f in fields(GeneratorSpec)})

    @property
    def factor_rank(self) -> int | None:
        return self.rank if self.mode == "lowrank" else None
