"""Adapter configurations: which linear layers get an adapter and how its factors are made.

Every adapter adds a rank-r update to the selected linear layers of a frozen base model,

    y = base(x) + scaling * B (A x),     A: (r, in),  B: (out, r)

and differs only in where ``A`` and ``B`` come from:

* :class:`LoRAAdapterConfig`: trained directly (Hu et al. 2022);
* :class:`NOLAAdapterConfig`: each factor a trained combination of seeded random matrices
  (Koohpayegani et al. 2024);
* :class:`MCNCAdapterConfig`: all factors laid end to end, cut into chunks of ``d`` numbers,
  each chunk ``beta * phi(alpha)`` with ``phi`` a frozen seeded sine network (Thrash et al. 2025).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from mcnc.core.generator import GeneratorSpec
from mcnc.core.limits import check_positive_ints, check_seed, is_number
from mcnc.core.manifold import MIXINGS

ALL_LINEAR = "all-linear"
ADAPTER_MIXINGS = (*MIXINGS, "hadamard-joint")
MCNC_ADAPTER_BETA_LR_SCALE = 0.3
"""Beta's rate of an MCNC adapter relative to alpha's (times beta's typical size, the relative
rule of :meth:`~mcnc.core.manifold.ChunkedManifold.param_groups`) unless a run says otherwise:
the held-in programme on SmolLM2-135M (results/adapter-beta-rate) measured 0.3x with the mixed
factors 0.067 +- 0.016 below 1x in validation loss at 6,000 trained numbers and level with it
at 26,880. A training setting, not a key of the adapter's file."""


@dataclass(frozen=True)
class AdapterConfig:
    """Settings every adapter method shares (the fields peft users know from ``LoraConfig``)."""

    method: ClassVar[str]

    target_modules: str | tuple[str, ...] = ALL_LINEAR
    """Which linear layers get an adapter. ``"all-linear"``: every linear layer except the
    output head; a tuple of names: layers whose name is one of them or ends with ``"." + name``
    (``("q_proj", "v_proj")``); any other string: a regex the full layer name must match
    (``re.fullmatch``)."""
    rank: int = 16
    """Rank r of the update ``B @ A`` of every targeted layer."""
    scaling: float = 1.0
    """Factor on the update (peft's ``lora_alpha / r``)."""
    dropout: float = 0.0
    """Dropout probability on the adapter's input during training."""
    seed: int = 0
    """Seed of everything random in the adapter (initial values, frozen bases, generator)."""

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if isinstance(self.target_modules, str):
            try:
                re.compile(self.target_modules)
            except re.error as e:
                raise ValueError(f"target_modules {self.target_modules!r} is not a valid "
                                 f"regex ({e}); pass a list of names or 'all-linear'") from None
        elif not (self.target_modules and all(isinstance(n, str) for n in self.target_modules)):
            raise ValueError("target_modules must be 'all-linear', a regex string or a non-empty"
                             f" list of layer names, got {self.target_modules!r}")
        check_positive_ints(rank=self.rank)
        if not is_number(self.scaling):
            raise ValueError(f"scaling must be a finite number, got {self.scaling!r}")
        if not (isinstance(self.dropout, int | float) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        check_seed(self.seed)

    def to_dict(self) -> dict:
        """JSON-ready fields plus the method name."""
        data = asdict(self)
        if isinstance(self.target_modules, tuple):
            data["target_modules"] = list(self.target_modules)
        return {"method": self.method, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


@dataclass(frozen=True)
class LoRAAdapterConfig(AdapterConfig):
    """LoRA: ``A`` and ``B`` are trained; ``A`` starts like ``nn.Linear``'s default
    initialisation, ``B`` at zero. Trainable numbers: ``r * (in + out)`` per layer."""

    method = "lora"


@dataclass(frozen=True)
class NOLAAdapterConfig(AdapterConfig):
    """NOLA: every ``A`` and ``B`` is its own combination of seeded random matrices; the
    ``coefficients`` are shared out over the factors in proportion to their sizes."""

    method = "nola"

    coefficients: int = 6000
    """Total trained coefficients over all factors."""
    budget: int | None = None
    """Trained numbers to spend, as for MCNC: when set, ``coefficients`` is this (NOLA trains
    exactly its coefficients)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.budget is not None:
            check_positive_ints(budget=self.budget)
            object.__setattr__(self, "coefficients", self.budget)
        check_positive_ints(coefficients=self.coefficients)


@dataclass(frozen=True)
class MCNCAdapterConfig(AdapterConfig, GeneratorSpec):
    """MCNC: all ``A`` factors end to end, then all ``B`` factors, each region cut into chunks
    of ``d`` numbers; chunk j is ``sum_i beta[j, i] * phi(alpha[j, i])`` for ``i < m``.
    Trained numbers: ``m * (k + 1)`` per chunk. The generator follows the paper's LLaMA set-up
    (generator input 5, one hidden layer of 32, output 5000, m = 1), with hidden gain 4; see
    :class:`~mcnc.core.generator.GeneratorSpec` for the generator's fields. Since version 0.3
    the factors are mixed (``mixing="hadamard"``) and beta trains at
    :data:`MCNC_ADAPTER_BETA_LR_SCALE` of its relative rate (results/adapter-beta-rate); files
    written before record ``mixing`` and reload as they were."""

    method = "mcnc"

    k: int = 5
    d: int = 5000
    width: int = 32
    depth: int = 1
    hidden_gain: float = 4.0
    m: int = 1
    """Generator outputs summed per chunk."""
    mixing: str = "hadamard"
    """``"hadamard"`` (the default since version 0.3): the generated A region and B region
    are each mixed by a seeded randomised Hadamard transform (as ``mcnc.compress`` does by
    default), so every chunk moves entries of every layer; ``"hadamard-joint"``: A and B
    are one region, mixed together, so every chunk moves entries of both factors of every
    layer (as each of Uni-LoRA's numbers does), and both start small (``joint_start``);
    ``"none"``: chunk j makes entries ``j d .. (j + 1) d - 1``."""
    budget: int | None = None
    """Trained numbers to spend: when set, :meth:`~mcnc.adapters.AdapterModel.add_adapter`
    chooses the smallest ``d`` whose chunks fit it on the model's layers (and ``d`` as given
    is ignored); the saved config records both."""
    alpha_init_scale: float = 1.0
    """Initial alphas uniform on ``[-s L, s L]^k`` for this ``s`` (1: the whole cube)."""
    joint_start: float = 0.02
    """With ``mixing="hadamard-joint"``: the initial spread of the entries relative to LoRA's
    initial A (for A) and to ``1/sqrt(3 r)`` (for B), so the adapter starts near the base
    model (its delta is a product of two small factors)."""
    a_start: float = 1.0
    """``A`` and ``B`` apart (``mixing`` ``"hadamard"`` or ``"none"``): ``A``'s entries start
    at this fraction of the spread of LoRA's initial ``A`` (an initialisation only: beta's
    rate and the mixing's entry scales do not change)."""
    b_start: float = 0.0
    """``A`` and ``B`` apart: ``B``'s entries start with the spread ``b_start / sqrt(3 r)``
    (LoRA's initial ``A`` spread for ``in_features = r``; an initialisation only); 0, the
    default, starts ``B`` at zero, so that the adapted model starts as the base model."""
    freeze_a: bool = False
    """``A`` and ``B`` apart: ``A`` is not generated but stays at a seeded draw of LoRA's
    initial ``A`` (times ``a_start``; regenerated from the seed, not stored), and every trained
    number goes to ``B``'s chunks (LoRA-FA's split; about twice as many chunks for ``B`` at
    the same budget). Beta's rate is relative to ``A``'s spread, as when ``A`` is generated,
    so ``B``'s entries move by as much per step."""

    def __post_init__(self) -> None:
        AdapterConfig.__post_init__(self)
        GeneratorSpec.__post_init__(self)
        check_positive_ints(m=self.m)
        if self.mixing not in ADAPTER_MIXINGS:
            raise ValueError(f"mixing must be one of {ADAPTER_MIXINGS}, got {self.mixing!r}")
        if self.budget is not None:
            check_positive_ints(budget=self.budget)
        for name in ("alpha_init_scale", "joint_start", "a_start"):
            if not is_number(getattr(self, name), 0, 1 + 1e-12):
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)!r}")
        if not (is_number(self.b_start) and 0 <= self.b_start <= 1):
            raise ValueError(f"b_start must be in [0, 1], got {self.b_start!r}")
        if not isinstance(self.freeze_a, bool):
            raise ValueError(f"freeze_a must be true or false, got {self.freeze_a!r}")
        if self.mixing == "hadamard-joint" and (self.a_start != 1 or self.b_start != 0
                                                or self.freeze_a):
            raise ValueError("a_start, b_start and freeze_a are for A and B apart; with "
                             "mixing='hadamard-joint' A and B are one region and joint_start "
                             "sets where both start")

    def generator_spec(self) -> GeneratorSpec:
        return GeneratorSpec(**{f.name: getattr(self, f.name) for f in fields(GeneratorSpec)})

    def to_dict(self) -> dict:
        """As :meth:`AdapterConfig.to_dict`, without ``a_start``, ``b_start`` and
        ``freeze_a`` at their defaults: a folder that does not use them is the one earlier
        versions wrote and read (they refuse fields they do not know)."""
        data = super().to_dict()
        for name in UNWRITTEN_AT_DEFAULT:
            if data[name] == getattr(MCNCAdapterConfig, name):
                del data[name]
        return data


UNWRITTEN_AT_DEFAULT = ("a_start", "b_start", "freeze_a")
"""MCNC adapter fields written to a folder only when they differ from their defaults."""


ADAPTER_CONFIGS: dict[str, type[AdapterConfig]] = {
    c.method: c for c in (MCNCAdapterConfig, NOLAAdapterConfig, LoRAAdapterConfig)}


def config_from_dict(data: dict) -> AdapterConfig:
    """Rebuild a config from :meth:`AdapterConfig.to_dict` output (raises ``ValueError``)."""
    if not isinstance(data, dict) or data.get("method") not in ADAPTER_CONFIGS:
        method = data.get("method") if isinstance(data, dict) else None
        raise ValueError(f"unknown adapter method {method!r}; expected one of "
                         f"{sorted(ADAPTER_CONFIGS)}")
    cls = ADAPTER_CONFIGS[data["method"]]
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in data.items() if k != "method"}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {data['method']} adapter config fields {sorted(unknown)}")
    try:
        return cls(**values)
    except TypeError as e:
        raise ValueError(f"invalid {data['method']} adapter config: {e}") from None
