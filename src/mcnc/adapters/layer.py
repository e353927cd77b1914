"""A linear layer with adapters: ``y = base(x) + scaling * B (A x)`` for the active adapter, or
for each sample its own adapter (mixed batches).

The layer holds no trained tensors. Its adapters' factors live in the model-wide
:class:`AdapterState`, which computes them at most once per forward pass of the model (once
for all layers, and once for all adapters of a mixed batch) and, when no gradient is needed,
keeps them until the adapter's tensors change.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mcnc.adapters.sources import FactorSource, generate_all
from mcnc.core.reparam import tensor_versions

BASE = "__base__"
"""The name that means "no adapter" in ``adapter_names`` of a mixed batch."""

GROUPED_MIN_SAMPLES = 2
"""A mixed batch whose adapters have at least this many samples each on average applies each
adapter to its own samples; below it, every sample's factors are stacked for batched products
(with one sample per adapter, copying a sample's factors costs less than one adapter's
separate products)."""


class AdapterState:
    """What every adapted layer of one model shares: the adapters, which one is active, which
    are merged into the base weights, the per-sample names of a mixed batch, and the cache of
    computed factors."""

    def __init__(self, sources: nn.ModuleDict):
        self.sources = sources
        self.active: str | None = None
        self.disabled = False
        self.merged: list[str] = []
        self.batch_adapters: list[str] | None = None
        self._forward_id = 0
        self._cache: dict[str, tuple[tuple, int | None, dict]] = {}
        self._batch_factors: tuple[int, dict] | None = None

    def new_forward(self) -> None:
        """Mark the start of a model forward pass: factors that carry a graph are recomputed."""
        self._forward_id += 1

    def _key(self, source: FactorSource) -> tuple:
        return tensor_versions([*source.parameters(), *source.buffers()])

    @staticmethod
    def _needs_graph(source: FactorSource) -> bool:
        """Whether factors computed now must carry a graph back to the source's parameters."""
        return torch.is_grad_enabled() and any(p.requires_grad for p in source.parameters())

    def _valid(self, name: str) -> bool:
        """A cached entry serves while its source is unchanged: one without a graph (computed
        under ``no_grad`` or for frozen parameters) only when no graph is needed now, one with
        a graph only within the forward pass that made it."""
        entry = self._cache.get(name)
        if entry is None or entry[0] != self._key(self.sources[name]):
            return False
        if entry[1] is None:
            return not self._needs_graph(self.sources[name])
        return entry[1] == self._forward_id

    def matrices(self, names: list[str]
                 ) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Adapter name -> layer name -> ``(A, B)``, computing all missing adapters together."""
        missing = [n for n in names if not self._valid(n)]
        if missing:
            sources = {n: self.sources[n] for n in missing}
            grad = any(self._needs_graph(s) for s in sources.values())
            with torch.set_grad_enabled(grad):
                computed = generate_all(sources)
                tag = self._forward_id if grad else None
                for n in missing:
                    matrices = sources[n].layout.matrices(*computed[n])
                    self._cache[n] = (self._key(sources[n]), tag, matrices)
        return {n: self._cache[n][2] for n in names}

    def prepare_batch(self, names: list[str]) -> None:
        """At the start of a mixed batch's forward pass: compute (or look up and check) the
        factors of its adapters once, for every layer of the pass (:meth:`batch_matrices`)."""
        self._batch_factors = (self._forward_id, self.matrices(names))

    def batch_matrices(self, names: list[str]
                       ) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Like :meth:`matrices`, but within the forward pass that :meth:`prepare_batch`
        started, its factors are served without checking each adapter again (with hundreds of
        adapters, checking them in every layer costs more than the layer's products)."""
        prepared = self._batch_factors
        if prepared is not None and prepared[0] == self._forward_id and all(
                n in prepared[1] for n in names):
            return prepared[1]
        return self.matrices(names)

    def end_batch(self) -> None:
        """After a mixed batch: let go of the factors :meth:`prepare_batch` held for it."""
        self._batch_factors = None

    def forget(self, name: str | None = None) -> None:
        """Drop cached factors (of one adapter, or all)."""
        self._batch_factors = None
        if name is None:
            self._cache.clear()
        else:
            self._cache.pop(name, None)


def linear_shape(module: nn.Module) -> tuple[int, int, bool] | None:
    """``(in_features, out_features, transposed)`` of a linear-like layer, or None.

    Linear-like: ``nn.Linear``; a leaf module with integer ``in_features``/``out_features``
    (e.g. a 4-bit linear layer); or a leaf with integer ``nx``/``nf`` and an ``(nx, nf)``
    weight, which computes ``x @ weight + bias`` (transformers' ``Conv1D`` in GPT-2:
    ``transposed``, so a merged delta goes in as its transpose).
    """
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    if next(module.children(), None) is not None:
        return None
    features = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if all(isinstance(f, int) for f in features):
        return features[0], features[1], False
    nx, nf = getattr(module, "nx", None), getattr(module, "nf", None)
    weight = getattr(module, "weight", None)
    if (isinstance(nx, int) and isinstance(nf, int) and isinstance(weight, torch.Tensor)
            and tuple(weight.shape) == (nx, nf)):
        return nx, nf, True
    return None


@dataclass(frozen=True)
class Slot:
    """How one adapter applies to this layer."""

    rank: int
    scaling: float
    dropout: float


class AdapterLinear(nn.Module):
    """Wraps a linear-like layer (see :func:`linear_shape`: ``nn.Linear``, a 4-bit layer,
    GPT-2's ``Conv1D``) and adds the deltas of its adapters."""

    def __init__(self, base_layer: nn.Module, name: str, state: AdapterState):
        super().__init__()
        shape = linear_shape(base_layer)
        if shape is None:
            raise TypeError(f"{name} ({type(base_layer).__name__}) is not a linear layer")
        self.base_layer, self.layer_name = base_layer, name
        self.in_features, self.out_features, self.transposed = shape
        self.slots: dict[str, Slot] = {}
        self._state = [state]  # in a list so that nn.Module does not register it

    @property
    def state(self) -> AdapterState:
        return self._state[0]

    def factor_matrices(self, names: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``A`` (r, in) and ``B`` (out, r) of each named adapter for this layer."""
        return {n: m[self.layer_name] for n, m in self.state.matrices(names).items()}

    def delta_weight(self, name: str) -> torch.Tensor:
        """``scaling * B @ A`` of adapter ``name``, (out, in) float32."""
        A, B = self.factor_matrices([name])[name]
        return self.slots[name].scaling * (B @ A)

    # -- merging ------------------------------------------------------------------------------
    def float_weight(self) -> nn.Parameter:
        """The base layer's weight, which a merge changes (refused for a 4-bit base)."""
        weight = getattr(self.base_layer, "weight", None)
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
            raise ValueError(f"cannot merge into {self.base_layer.__class__.__name__} (no "
                             "floating-point weight, e.g. a 4-bit base); load the base model in "
                             "float to merge, or serve the adapter unmerged")
        return weight

    def _oriented(self, delta: torch.Tensor) -> torch.Tensor:
        """The (out, in) delta laid out as the base layer stores its weight."""
        return delta.T if self.transposed else delta

    @torch.no_grad()
    def merge(self, name: str) -> None:
        """Add adapter ``name``'s delta to the base weight."""
        weight = self.float_weight()
        weight += self._oriented(self.delta_weight(name)).to(weight.dtype)

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        """Subtract adapter ``name``'s delta from the base weight."""
        weight = self.float_weight()
        weight -= self._oriented(self.delta_weight(name)).to(weight.dtype)

    def untie(self, sharers: list[str]) -> None:
        """Give the base layer its own copy of a weight it shares with ``sharers``, and say
        so."""
        weight = self.base_layer.weight
        self.base_layer.weight = nn.Parameter(weight.detach().clone(),
                                              requires_grad=weight.requires_grad)
        warnings.warn(f"untied {self.layer_name}.weight from {', '.join(sharers)} to merge "
                      "into it: the merged model stores both matrices", stacklevel=4)

    # -- running ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        state = self.state
        if state.disabled:
            return out
        if state.batch_adapters is not None:
            delta = self._mixed_delta(x, state.batch_adapters)
            return out if delta is None else out + delta.to(out.dtype)
        name = state.active
        if name is None or name not in self.slots or name in state.merged:
            return out
        A, B = self.factor_matrices([name])[name]
        s = self.slots[name]
        h = F.dropout(x.to(A.dtype), s.dropout, self.training) if s.dropout else x.to(A.dtype)
        return out + (s.scaling * F.linear(F.linear(h, A), B)).to(out.dtype)

    def _mixed_delta(self, x: torch.Tensor, names: list[str]) -> torch.Tensor | None:
        """Per-sample deltas: sample i uses adapter ``names[i]`` (``BASE``: none); None when no
        sample uses an adapter of this layer. Dropout is not applied (mixed batches are for
        serving).

        When one adapter serves every sample, the products are those of an unmixed batch. When
        the adapters have :data:`GROUPED_MIN_SAMPLES` samples each on average, each adapter
        runs those products on its own samples (:meth:`_grouped_delta`); otherwise every
        sample's factors are stacked for two batched products (:meth:`_stacked_delta`).
        """
        batch = x.shape[0]
        if batch != len(names):
            if len(names) == 0 or batch % len(names):
                raise ValueError(f"adapter_names has {len(names)} entries but the batch has "
                                 f"{batch} samples; give one name per sample")
            repeat = batch // len(names)  # e.g. generate() with several beams per prompt
            names = [n for n in names for _ in range(repeat)]
        samples: dict[str, list[int]] = {}
        for i, n in enumerate(names):
            if n in self.slots:
                samples.setdefault(n, []).append(i)
        if not samples:
            return None
        matrices = self.state.batch_matrices(list(samples))
        factors = {n: matrices[n][self.layer_name] for n in samples}
        if len(samples) == 1 and len(next(iter(samples.values()))) == batch:
            (n, (A, B)), = factors.items()
            return self.slots[n].scaling * F.linear(F.linear(x.to(A.dtype), A), B)
        if batch >= GROUPED_MIN_SAMPLES * len(samples):
            return self._grouped_delta(x, samples, factors)
        return self._stacked_delta(x, names, factors)

    def _grouped_delta(self, x: torch.Tensor, samples: dict[str, list[int]],
                       factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Each adapter's unmixed products on its own samples, written into a zero delta: no
        factor is copied, and the Python work grows with the number of adapters."""
        dtype = next(iter(factors.values()))[0].dtype
        delta = x.new_zeros(*x.shape[:-1], self.out_features, dtype=dtype)
        for n, rows in samples.items():
            A, B = factors[n]
            index = torch.tensor(rows, device=x.device)
            h = x.index_select(0, index).to(A.dtype)
            delta.index_copy_(0, index, self.slots[n].scaling * F.linear(F.linear(h, A), B))
        return delta

    def _stacked_delta(self, x: torch.Tensor, names: list[str],
                       factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Every sample's factors stacked, padded to the largest rank present (zero rows of A,
        zero columns of B add nothing), zeros for a sample without an adapter here: the whole
        batch is two batched matrix products, (b, s, in) x (b, in, r) then (b, s, r) x
        (b, r, out), with each sample's scaling applied between them. The factors are copied
        once per sample (b x 4 x r x (in + out) bytes), never once per adapter."""
        rank = max(A.shape[0] for A, _ in factors.values())
        for n, (A, B) in factors.items():
            if A.shape[0] < rank:
                pad = rank - A.shape[0]
                factors[n] = F.pad(A, (0, 0, 0, pad)), F.pad(B, (0, pad))
        A0, B0 = next(iter(factors.values()))
        zeros = A0.new_zeros(A0.shape), B0.new_zeros(B0.shape)
        per_sample = [factors.get(n, zeros) for n in names]
        A_batch = torch.stack([A for A, _ in per_sample])
        B_batch = torch.stack([B for _, B in per_sample])
        scaling = torch.tensor([self.slots[n].scaling if n in factors else 0.0 for n in names],
                               dtype=A_batch.dtype, device=A_batch.device)
        h = x.reshape(len(names), -1, self.in_features).to(A_batch.dtype)
        hidden = torch.bmm(h, A_batch.transpose(1, 2)) * scaling[:, None, None]
        delta = torch.bmm(hidden, B_batch.transpose(1, 2))
        return delta.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"adapters={list(self.slots)}"
