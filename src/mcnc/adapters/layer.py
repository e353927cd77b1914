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

    def forget(self, name: str | None = None) -> None:
        """Drop cached factors (of one adapter, or all)."""
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
            return out + self._mixed_delta(x, state.batch_adapters).to(out.dtype)
        name = state.active
        if name is None or name not in self.slots or name in state.merged:
            return out
        A, B = self.factor_matrices([name])[name]
        s = self.slots[name]
        h = F.dropout(x.to(A.dtype), s.dropout, self.training) if s.dropout else x.to(A.dtype)
        return out + (s.scaling * F.linear(F.linear(h, A), B)).to(out.dtype)

    def _mixed_delta(self, x: torch.Tensor, names: list[str]) -> torch.Tensor:
        """Per-sample deltas: sample i uses adapter ``names[i]`` (``BASE``: none).

        All adapters present are padded to the largest rank (zero rows of A, zero columns of B
        add nothing) and stacked, with a zero adapter last for ``BASE``, so the whole batch is
        two batched matrix products: (b, s, in) x (b, in, r) then (b, s, r) x (b, r, out).
        Dropout is not applied (mixed batches are for serving).
        """
        batch = x.shape[0]
        if batch != len(names):
            if len(names) == 0 or batch % len(names):
                raise ValueError(f"adapter_names has {len(names)} entries but the batch has "
                                 f"{batch} samples; give one name per sample")
            repeat = batch // len(names)  # e.g. generate() with several beams per prompt
            names = [n for n in names for _ in range(repeat)]
        present = [n for n in dict.fromkeys(names) if n in self.slots]
        if not present:
            return x.new_zeros(())
        factors = self.factor_matrices(present)
        rank = max(self.slots[n].rank for n in present)
        As, Bs = [], []
        for n in present:
            A, B = factors[n]
            pad = rank - A.shape[0]
            As.append(F.pad(A * self.slots[n].scaling, (0, 0, 0, pad)))
            Bs.append(F.pad(B, (0, pad)))
        As.append(torch.zeros_like(As[0]))
        Bs.append(torch.zeros_like(Bs[0]))
        position = {n: i for i, n in enumerate(present)}
        index = torch.tensor([position.get(n, len(present)) for n in names], device=x.device)
        A_batch, B_batch = torch.stack(As)[index], torch.stack(Bs)[index]
        h = x.reshape(batch, -1, self.in_features).to(A_batch.dtype)
        delta = torch.bmm(torch.bmm(h, A_batch.transpose(1, 2)), B_batch.transpose(1, 2))
        return delta.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"adapters={list(self.slots)}"
