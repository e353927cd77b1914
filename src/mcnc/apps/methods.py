"""Every method behind one call, with one budget accounting: ``build_method(name, model, ...)``.

The budget is the number of trained numbers a method stores for the selected weights
(MCNC: alphas and betas; PRANC and NOLA: coefficients; LoRA: factor entries; pruning: kept
values). Parameters left dense (normalisation layers, as in the paper) are trained and stored
by every method alike and reported on top of the budget.

=============  =============================================================================
dense          the uncompressed model (no budget)
mcnc           MCNC scratch mode; d is chosen so that n_chunks * m * (k + 1) ~= budget
mcnc-lowrank   MCNC on rank-``rank`` factors (the paper's "w/ LoRA")
pranc          theta0 + P c with ``budget`` coefficients
nola           rank-``rank`` factors from random bases, ``budget`` coefficients in total
lora           low-rank factors trained directly, the largest rank within the budget
pruning        global magnitude pruning to ``budget`` non-zeros, after dense training
=============  =============================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from mcnc.baselines import (
    LoRAConfig,
    NOLAConfig,
    PRANCConfig,
    PruningConfig,
    lora,
    nola,
    pranc,
    prune,
)
from mcnc.baselines.basis import DEFAULT_MAX_BYTES
from mcnc.compress import compress
from mcnc.core.config import MCNCConfig
from mcnc.core.layout import plan_layout
from mcnc.core.limits import MAX_D

METHOD_NAMES = ("dense", "mcnc", "mcnc-lowrank", "pranc", "nola", "lora", "pruning")

@dataclass(frozen=True)
class MethodSettings:
    """A method's own knobs for :func:`build_method` (the budget and the seed are arguments of
    their own: they belong to the run, not to one method). MCNC's defaults are
    :class:`~mcnc.core.config.MCNCConfig`'s."""

    k: int = MCNCConfig.k
    d: int | None = None
    """MCNC chunk size; derived from the budget when None."""
    L: float = MCNCConfig.L
    m: int = MCNCConfig.m
    rank: int = MCNCConfig.rank
    """Rank of mcnc-lowrank's factors."""
    nola_rank: int = NOLAConfig.rank
    """Rank of NOLA's factors."""
    activation: str = MCNCConfig.activation
    width: int = MCNCConfig.width
    """MCNC generator: hidden width."""
    depth: int = MCNCConfig.depth
    """MCNC generator: hidden (sine) layers."""
    hidden_gain: float = MCNCConfig.hidden_gain
    """MCNC generator: scale of the hidden layers' initialisation."""
    alpha_init_scale: float = MCNCConfig.alpha_init_scale
    """MCNC: initial alphas uniform on this fraction of the cube."""
    mixing: str = MCNCConfig.mixing
    """MCNC: ``"hadamard"`` spreads every chunk over all weights."""
    max_basis_bytes: int = DEFAULT_MAX_BYTES


MCNC_METHODS = ("mcnc", "mcnc-lowrank")
_GENERATOR_SETTINGS = ("k", "d", "L", "m", "activation", "width", "depth", "hidden_gain",
                       "alpha_init_scale", "mixing")
SETTINGS_READ_BY: dict[str, tuple[str, ...]] = {
    "dense": (), "mcnc": _GENERATOR_SETTINGS, "mcnc-lowrank": (*_GENERATOR_SETTINGS, "rank"),
    "pranc": ("max_basis_bytes",), "nola": ("nola_rank", "max_basis_bytes"), "lora": (),
    "pruning": (),
}
"""Method -> the fields of :class:`MethodSettings` that :func:`build_method` reads for it."""


def _mcnc_config(model: nn.Module, s: MethodSettings, budget: int | None, seed: int,
                 mode: str) -> MCNCConfig:
    config = MCNCConfig(k=s.k, d=s.d or s.k + 1, L=s.L, m=s.m, rank=s.rank, mode=mode,
                        activation=s.activation, width=s.width, depth=s.depth,
                        hidden_gain=s.hidden_gain, alpha_init_scale=s.alpha_init_scale,
                        mixing=s.mixing, seed=seed)
    per_chunk = s.m * (s.k + 1)
    total = plan_layout(model, config).total
    if s.d is not None:
        n = -(-total // s.d)
        if budget is not None and n * per_chunk > budget:
            raise ValueError(f"with d={s.d}, the {n} chunks train {n * per_chunk} numbers,"
                             f" more than the budget of {budget}; raise d or the budget, or "
                             "leave d unset to derive it from the budget")
        return config
    if _need_budget(budget) < per_chunk:
        raise ValueError(f"a budget of {budget} cannot pay for one chunk of m * (k + 1) = "
                         f"{per_chunk} numbers; raise the budget or lower k or m")
    d = -(-total // (budget // per_chunk))
    if d > MAX_D:
        raise ValueError(f"a budget of {budget} needs chunks of d={d} > {MAX_D}; raise the "
                         "budget or k, or use m > 1")
    return replace(config, d=max(d, s.k + 1))


def _need_budget(budget: int | None) -> int:
    if budget is None or budget < 1:
        raise ValueError("this method needs a positive --budget (trained numbers to store)")
    return budget


def lora_rank_for(model: nn.Module, budget: int) -> int:
    """The largest LoRA rank whose trained numbers fit ``budget``."""
    rank = 0
    while True:
        size = plan_layout(model, LoRAConfig(rank=rank + 1)).total
        if size > budget or rank >= 4096:
            break
        rank += 1
    if rank == 0:
        raise ValueError(f"even rank-1 LoRA needs more than {budget} numbers on this model")
    return rank


def build_method(name: str, model: nn.Module, budget: int | None = None, seed: int = 0,
                 settings: MethodSettings | None = None) -> nn.Module:
    """Reparameterise ``model`` (in place) with method ``name``; ``dense`` returns it as is.

    Args:
        budget: trained numbers the method may store for the selected weights (every method
            but ``dense``, and ``mcnc`` with ``settings.d`` set, needs one).
        seed: seeds the method's frozen random parts and its initial values.
        settings: the method's own knobs (defaults: :class:`MethodSettings()`).

    ``pruning`` prunes the model as it is now: train it dense first (``mcnc train`` does).
    """
    s = settings or MethodSettings()
    if name == "dense":
        return model
    if name in MCNC_METHODS:
        mode = "lowrank" if name == "mcnc-lowrank" else "scratch"
        return compress(model, _mcnc_config(model, s, budget, seed, mode))
    if name == "pranc":
        return pranc(model, PRANCConfig(coefficients=_need_budget(budget), seed=seed),
                     s.max_basis_bytes)
    if name == "nola":
        return nola(model, NOLAConfig(coefficients=_need_budget(budget), rank=s.nola_rank,
                                      seed=seed), s.max_basis_bytes)
    if name == "lora":
        return lora(model, LoRAConfig(rank=lora_rank_for(model, _need_budget(budget)), seed=seed))
    if name == "pruning":
        return prune(model, PruningConfig(nonzeros=_need_budget(budget)))
    raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHOD_NAMES)}")
