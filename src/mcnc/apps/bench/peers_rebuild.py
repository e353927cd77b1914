"""Reconstruction speed of peft's peer adapters (Uni-LoRA, VeRA, FourierFT) beside MCNC, all
producing the same thing: the full ``(out, in)`` weight delta of every adapted linear layer.

What one timed call does, per method (under ``torch.no_grad``, deltas produced one layer at a
time and dropped before the next, as a merge consumes them):

* ``mcnc (B @ A)``: MCNC's factors of every layer in one generator call, then
  ``scaling * B @ A`` per layer (what :meth:`mcnc.adapters.layer.AdapterLinear.delta_weight`
  gives).
* ``unilora``, ``vera``, ``fourierft``: peft's own ``get_delta_weight("default")`` of every
  adapted layer (Uni-LoRA: gather both factors from the shared vector, ``B @ A``; VeRA: scale
  the shared random factors, ``B @ A``; FourierFT: scatter the coefficients into an ``(out,
  in)`` spectrum and take the real part of its inverse 2-D FFT).

The unit is the delta entry: a case's ``weights`` is ``sum(out * in)`` over the adapted
layers, for every method alike (the factor rows of :mod:`mcnc.apps.bench.reconstruction` count
``A`` and ``B`` entries instead: another workload). Every method is set to the same budget of
trained numbers through :func:`mcnc.apps.peers.peer_config` (VeRA cannot go below
``sum(out) + layers``; its own count is reported). Trained tensors are drawn at random before
timing (peft starts VeRA's ``lambda_b`` at zero, MCNC its ``B`` side), so the deltas timed are
non-zero.

Shapes without weights: for a model that does not fit in memory (a 7B LLaMA's adapters),
:func:`shape_only_model` builds linear layers of the right shapes whose weight is one zero
broadcast to ``(out, in)`` (stride 0): the base costs 4 bytes in all, peft sees CPU float32
layers of the right shapes, and only the adapter tensors are real.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn

from mcnc.adapters.config import MCNCAdapterConfig
from mcnc.adapters.sources import AdaptedLayer, FactorLayout, MCNCSource, d_for_budget
from mcnc.apps.bench.cases import Case
from mcnc.apps.peers import peer_config

PEER_REBUILDS = ("unilora", "vera", "fourierft")
"""peft's peers timed rebuilding their deltas, in table order."""
ADAPTER = "default"
"""The name peft gives the one adapter of a model."""
MCNC_DELTAS = "mcnc (B @ A)"
FOURIERFT_TIMED_BLOCKS = 2
"""Blocks of the 7B LLaMA FourierFT is timed on (one rebuild of all 32 takes minutes here: an
inverse FFT of every ``(out, in)`` spectrum); its time is scaled to all blocks."""


def shape_only_model(targets: tuple[AdaptedLayer, ...]) -> nn.Module:
    """A module tree with a bias-free ``nn.Linear`` at each of ``targets``' names, of its
    shape, whose weight is a single zero broadcast to ``(out, in)`` (stride 0, shared by every
    layer): peft can adapt it, and no base weights are allocated."""
    root, zero = nn.Module(), torch.zeros(())
    for t in targets:
        *path, leaf = t.name.split(".")
        parent = root
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        layer = nn.Linear(t.in_features, t.out_features, bias=False, device="meta")
        layer.weight = nn.Parameter(zero.expand(t.out_features, t.in_features),
                                    requires_grad=False)
        parent.add_module(leaf, layer)
    return root


def _randomise(tensors: list[torch.Tensor], seed: int, std: float = 0.02) -> None:
    """Draw ``tensors`` from ``N(0, std^2)`` (a stand-in for trained values)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.randn(t.shape, generator=g) * std)


def attach_peer(method: str, base: nn.Module, targets: tuple[AdaptedLayer, ...], budget: int,
                sized_for: tuple[AdaptedLayer, ...] | None = None, seed: int = 0) -> nn.Module:
    """``base`` (changed in place) wrapped by peft with ``method`` on ``targets``, sized by
    :func:`mcnc.apps.peers.peer_config` to ``budget`` trained numbers over the layers
    ``sized_for`` (default ``targets``; a slice of a model is sized as the whole), its trained
    tensors drawn at random."""
    import peft

    sized_for = sized_for or targets
    config = peer_config(method, budget, [(t.out_features, t.in_features) for t in sized_for],
                         [t.name for t in targets])
    model = peft.get_peft_model(base, config)
    _randomise([p for p in model.parameters() if p.requires_grad], seed)
    return model


def peer_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers peft adapted in ``model`` (a ``PeftModel``), by their name in the base."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name: m for name, m in model.get_base_model().named_modules()
            if isinstance(m, BaseTunerLayer) and hasattr(m, "get_delta_weight")}


def peer_deltas(layers: dict[str, nn.Module]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, delta)`` of every layer of ``layers`` (:func:`peer_layers`), each from peft's
    own ``get_delta_weight``, one at a time."""
    for name, layer in layers.items():
        yield name, layer.get_delta_weight(ADAPTER)


def mcnc_source(targets: tuple[AdaptedLayer, ...], budget: int | None = None, rank: int = 16,
                seed: int = 0) -> MCNCSource:
    """An MCNC adapter source on ``targets`` at rank ``rank``: the default generator, with
    ``d`` chosen to fit ``budget`` trained numbers when given; alpha and beta drawn at
    random (beta starts at zero)."""
    layout = FactorLayout(targets, rank)
    config = MCNCAdapterConfig(rank=rank)
    if budget is not None:
        config = MCNCAdapterConfig(rank=rank, d=d_for_budget(layout, budget, config))
    source = MCNCSource(config, layout)
    _randomise([source.beta], seed)
    return source


def mcnc_deltas(source: MCNCSource) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, scaling * B @ A)`` of every layer of ``source``'s layout: all factors from
    one generator call, then one product per layer."""
    a, b = source.factors()
    scaling = source.config.scaling
    for name, (A, B) in source.layout.matrices(a, b).items():
        delta = B @ A
        yield name, delta if scaling == 1 else delta.mul_(scaling)


def consume(deltas: Callable[[], Iterator[tuple[str, torch.Tensor]]]) -> Callable[[], int]:
    """A timed call: every delta of ``deltas()`` produced under ``torch.no_grad`` and dropped;
    returns how many entries were produced."""
    def run() -> int:
        entries = 0
        with torch.no_grad():
            for _, delta in deltas():
                entries += delta.numel()
        return entries
    return run


def check_first_delta(deltas: Iterator[tuple[str, torch.Tensor]],
                      targets: tuple[AdaptedLayer, ...]) -> None:
    """Refuse a rebuild whose first delta is not a finite, non-zero ``(out, in)`` float32
    matrix of the first target."""
    with torch.no_grad():
        name, delta = next(deltas)
    t = targets[0]
    expected = (t.out_features, t.in_features)
    if (name != t.name or tuple(delta.shape) != expected or delta.dtype != torch.float32
            or not torch.isfinite(delta).all() or not delta.any()):
        raise RuntimeError(f"delta of {name} is {tuple(delta.shape)} {delta.dtype}, expected "
                           f"{t.name} {expected} float32, finite and non-zero")


def _delta_entries(targets: tuple[AdaptedLayer, ...]) -> int:
    return sum(t.out_features * t.in_features for t in targets)


def _product_flops(targets: tuple[AdaptedLayer, ...], rank: int, scaled_factors: bool) -> int:
    """``B @ A`` of every target at ``rank`` (``scaled_factors``: after one multiplication per
    factor entry, as Uni-LoRA's and VeRA's scales)."""
    return sum(2 * rank * t.out_features * t.in_features
               + (rank * (t.out_features + t.in_features) if scaled_factors else 0)
               for t in targets)


def delta_cases(workload: str, targets: tuple[AdaptedLayer, ...],
                base: Callable[[tuple[AdaptedLayer, ...]], nn.Module], budget: int | None,
                fourierft_targets: int | None = None, calls: int = 1) -> list[Case]:
    """MCNC (the reference) and Uni-LoRA, VeRA and FourierFT rebuilding the full delta of every
    layer of ``targets`` at the same budget (``None``: MCNC's default generator sets it).

    ``base(layers)`` gives the model the peers adapt (a fresh one per peer: peft changes it in
    place). ``fourierft_targets``: FourierFT is timed on the first that many targets (whole
    blocks, so that the slice has the model's mix of shapes) and scaled by the ratio of delta
    entries; ``None`` times all of them."""
    source = mcnc_source(targets, budget)
    budget = source.alpha.numel() + source.beta.numel()
    rank, entries = source.layout.rank, _delta_entries(targets)
    check_first_delta(mcnc_deltas(source), targets)
    counted = (f"weights = delta entries, sum(out * in) over the {len(targets)} layers; "
               "deltas produced one layer at a time and dropped")
    flops = source.generation_flops() + _product_flops(targets, rank, scaled_factors=False)
    flops = (flops + (entries if source.config.scaling != 1 else 0)) / entries
    cases = [Case("reconstruction", workload, MCNC_DELTAS, consume(lambda: mcnc_deltas(source)),
                  entries, "weights",
                  {"trained": budget, "generation_flops_per_weight": flops,
                   "note": f"rank {rank}: the factors of all layers in one generator call, "
                           f"then scaling * B @ A per layer; {counted}"},
                  calls=calls, warmup=1)]
    for method in PEER_REBUILDS:
        timed = targets
        if method == "fourierft" and fourierft_targets is not None:
            timed = targets[:fourierft_targets]
        model = attach_peer(method, base(timed), timed, budget, sized_for=targets)
        layers = peer_layers(model)
        check_first_delta(peer_deltas(layers), timed)
        in_slice = sum(p.numel() for p in model.parameters() if p.requires_grad)
        trained = round(in_slice * len(targets) / len(timed))  # a slice: FourierFT's, even
        info: dict = {"trained": trained}
        first = layers[timed[0].name]
        if method == "fourierft":
            note = (f"{first.fourierft_n_frequency[ADAPTER]} coefficients per layer; peft's "
                    "get_delta_weight (an inverse 2-D FFT per layer, no GEMM bound stated)")
        else:
            r = first.r[ADAPTER]
            info["generation_flops_per_weight"] = _product_flops(targets, r, True) / entries
            note = f"rank {r}; peft's get_delta_weight"
            if trained > budget:
                note += f" (its least count: it cannot train as few as {budget:,})"
        scale = 1.0
        if len(timed) < len(targets):
            scale = entries / _delta_entries(timed)
            note += (f"; timed on the first {len(timed)} of the {len(targets)} layers and "
                     f"scaled by their share of the delta entries (x{scale:g})")
        info["note"] = f"{note}; {counted}"
        cases.append(Case("reconstruction", workload, method,
                          consume(lambda layers=layers: peer_deltas(layers)), entries, "weights",
                          info, calls=calls, warmup=1, time_scale=scale))
    return cases


def shape_only_cases(workload: str, targets: tuple[AdaptedLayer, ...],
                     fourierft_targets: int | None = None, calls: int = 1) -> list[Case]:
    """:func:`delta_cases` on ``targets`` with no base weights (:func:`shape_only_model`) and
    MCNC's default generator (as the factor rows of the same shapes)."""
    return delta_cases(workload, targets, shape_only_model, None, fourierft_targets, calls)


def model_delta_cases(workload: str, model: nn.Module, budget: int, calls: int = 2
                      ) -> list[Case]:
    """:func:`delta_cases` on every linear layer of ``model``'s blocks (``all-linear``: the
    output head excluded), each peer on its own copy of the real model, at ``budget``."""
    from mcnc.adapters.config import ALL_LINEAR
    from mcnc.adapters.targets import select_targets

    targets = select_targets(model, ALL_LINEAR)
    return delta_cases(workload, targets, lambda _: copy.deepcopy(model), budget, calls=calls)
