"""The machinery every compression method shares: selected parameters computed on the fly.

A :class:`Reparameterized` model wraps an ordinary ``nn.Module``. The parameters chosen by a
:class:`~mcnc.core.layout.Layout` are removed from their modules; before every forward pass the
method computes the flat vector of those parameters from its own few trainable tensors,

    flat  = method's generated vector                 (scratch)
    flat  = theta0 + method's generated vector        (delta: theta0 frozen)

cuts it into named tensors (:func:`~mcnc.core.layout.materialize`) and installs them as plain
tensors, so the wrapped model runs unchanged and gradients flow back to the method's tensors.
Subclasses (MCNC, PRANC, NOLA, LoRA, pruning) only say how the flat vector is made and what
goes into the file.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import nn

from mcnc.core.config import Selection
from mcnc.core.layout import Layout, materialize, owner_of


def flat_values(layout: Layout, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The current values of the layout's parameters laid end to end (float32, detached):
    ``sum(t.numel)`` numbers, whether or not the layout stores targets as factors."""
    return torch.cat([params[t.name].detach().reshape(-1).float() for t in layout.targets])


def tensor_versions(tensors) -> tuple:
    """A key that changes whenever one of ``tensors`` is modified in place, replaced, moved
    or cast: the cache key of computed weights."""
    return tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in tensors)


METHODS: dict[str, type[Reparameterized]] = {}
"""Every method class by its file name; filled as the classes are defined."""


_VALUES_FOLLOW = contextvars.ContextVar("mcnc_values_follow", default=False)


@contextmanager
def values_follow() -> Iterator[None]:
    """Within it, a compressed model being built (or moved) does not generate its weights: a
    file's values are copied in next, and loading generates the weights once, from them (it
    generated them twice before, the first time from the initial values)."""
    token = _VALUES_FOLLOW.set(True)
    try:
        yield
    finally:
        _VALUES_FOLLOW.reset(token)


class Reparameterized(nn.Module):
    """A model whose selected weights are computed from a method's trainable tensors.

    ``parameters()`` yields exactly the method's tensors and the dense leftovers that train.
    Whenever no gradient can reach the method's tensors (``torch.no_grad()``,
    ``torch.inference_mode()``, or frozen tensors, as in any evaluation loop) the computed
    weights are cached and reused until those tensors, the device or the dtype change.
    """

    method: ClassVar[str]
    """Name of the method, as written in files (``"mcnc"``, ``"pranc"``, ...)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "method" in cls.__dict__:  # intermediate base classes define no method
            METHODS[cls.method] = cls

    def __init__(self, base: nn.Module, layout: Layout, config: Selection,
                 theta0: torch.Tensor | None = None):
        super().__init__()
        self.base, self.layout, self.config = base, layout, config
        self.register_buffer("theta0", theta0, persistent=False)
        self._slots = []
        for t in layout.targets:
            for name in t.names:
                owner, attr = owner_of(base, name)
                owner._parameters.pop(attr, None)
                self._slots.append((owner, attr, t.name))
        if not config.trains_dense:
            base.requires_grad_(False)
        self._cache: tuple[tuple, dict[str, torch.Tensor]] | None = None

    # -- what a method defines ----------------------------------------------------------------
    def method_tensors(self) -> dict[str, torch.Tensor]:
        """The method's trainable tensors by name; the computed weights depend on nothing else
        (besides frozen buffers)."""
        raise NotImplementedError

    def generated_flat(self) -> torch.Tensor:
        """The method's contribution to the flat vector (length ``>= layout.total``)."""
        raise NotImplementedError

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """The method's tensors as they go into the file (names prefixed by the method)."""
        return {f"{self.method}.{name}": t for name, t in self.method_tensors().items()}

    def file_metadata(self) -> dict:
        """The method's own JSON metadata (everything needed to rebuild it from the file)."""
        raise NotImplementedError

    def format_version(self) -> int:
        """The oldest ``.mcnc`` format version that can describe this model."""
        return 1

    @classmethod
    def config_from_file(cls, meta: dict) -> Selection:
        """The method's config from a file's metadata (raises on invalid values)."""
        raise NotImplementedError

    @classmethod
    def expected_tensors(cls, config: Selection, layout: Layout, meta: dict
                         ) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every method tensor a valid file holds."""
        raise NotImplementedError

    @classmethod
    def check_tensors(cls, config: Selection, layout: Layout,
                      tensors: dict[str, torch.Tensor]) -> None:
        """Method-specific checks of a file's tensors beyond shapes (raise FormatError)."""

    @classmethod
    def from_file(cls, skeleton: nn.Module, layout: Layout, config: Selection,
                  tensors: dict[str, torch.Tensor]) -> Reparameterized:
        """Wrap ``skeleton`` as the file describes (values are copied by :meth:`load_values`)."""
        return cls(skeleton, layout, config)

    @torch.no_grad()
    def load_values(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy the method's tensors from a file's tensors (already validated)."""
        for name, t in self.method_tensors().items():
            t.copy_(tensors[f"{self.method}.{name}"])

    def after_step(self) -> None:
        """Called by training loops after each optimiser step (e.g. to project parameters)."""

    def method_param_groups(self, lr: float, **rates: float) -> list[dict]:
        """Optimiser groups of the method's own tensors: one group at ``lr``. MCNC takes a
        ``beta_lr_scale``; other methods refuse any rate of their own."""
        if rates:
            raise ValueError(f"{sorted(rates)}: {self.method} has no such rate (it trains "
                             f"{sorted(self.method_tensors())} at one rate)")
        return [{"params": list(self.method_tensors().values()), "lr": lr}]

    def param_groups(self, lr: float, dense_lr: float, **rates: float) -> list[dict]:
        """Optimiser groups, as nanoGPT's ``configure_optimizers`` builds them: the method's
        tensors at ``lr`` (:meth:`method_param_groups`, which reads ``rates``), every other
        trainable parameter at ``dense_lr``."""
        own = self.method_param_groups(lr, **rates)
        ids = {id(p) for group in own for p in group["params"]}
        dense = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [g for g in [*own, {"params": dense, "lr": dense_lr}] if g["params"]]

    # -- the shared machinery -------------------------------------------------------------------
    def _refresh(self) -> None:
        """Install the current weights on the modules (subclasses call it at the end of init);
        skipped while :func:`values_follow` is active."""
        if _VALUES_FOLLOW.get():
            return
        with torch.no_grad():
            self._install(self.generated_weights())

    def _compute_weights(self) -> dict[str, torch.Tensor]:
        weights = materialize(self.layout, self.generated_flat())
        if self.theta0 is None:
            return weights
        out, offset = {}, 0
        for t in self.layout.targets:
            out[t.name] = self.theta0[offset : offset + t.numel].view(t.shape) + weights[t.name]
            offset += t.numel
        return out

    def _cache_key(self) -> tuple:
        return tensor_versions([*self.method_tensors().values(), *self.buffers(recurse=False)])

    def generated_weights(self) -> dict[str, torch.Tensor]:
        """The compressed parameters as tensors, by canonical name (cached when no grad)."""
        needs_grad = torch.is_grad_enabled() and any(
            t.requires_grad for t in self.method_tensors().values())
        if needs_grad or torch.compiler.is_compiling():  # a compiled graph keeps no cache
            self._cache = None
            return self._compute_weights()
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self._compute_weights())
        return self._cache[1]

    def _install(self, weights: dict[str, torch.Tensor]) -> None:
        for owner, attr, name in self._slots:
            setattr(owner, attr, weights[name])

    def forward(self, *args, **kwargs):
        weights = self.generated_weights()
        self._install(weights)
        output = self.base(*args, **kwargs)
        if any(w.requires_grad for w in weights.values()):
            # The graph keeps what backward needs; the modules keep detached views, so they do
            # not hold the graph alive and the model can still be deep-copied.
            self._install({name: w.detach() for name, w in weights.items()})
        return output

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._refresh()
        return self

    # -- views of the result ------------------------------------------------------------------
    @torch.no_grad()
    def dense_state_dict(self, copies: bool = True) -> dict[str, torch.Tensor]:
        """The state dict of the original, uncompressed architecture, on CPU: copies, or
        (``copies=False``, for a model about to be dropped) the model's own tensors, the
        generated weights as views of one generated vector (the names of tied weights still
        get tensors of their own, as ``safetensors`` needs)."""
        weights = self.generated_weights()
        by_name = {n: weights[t.name] for t in self.layout.targets for n in t.names}
        leftovers = self.base.state_dict()
        state, seen = {}, set()
        for key in self.layout.state_keys:
            value = (by_name[key] if key in by_name else leftovers[key]).detach().cpu()
            shared = (value.data_ptr(), value.shape) in seen
            seen.add((value.data_ptr(), value.shape))
            state[key] = value.clone() if copies or shared else value
        return state

    def dense_leftovers(self) -> dict[str, torch.Tensor]:
        """State entries stored as they are: buffers, and parameters that are not frozen."""
        frozen = {n for n, p in self.base.named_parameters() if not p.requires_grad}
        return {k: v for k, v in self.base.state_dict().items() if k not in frozen}

    def trainable_count(self) -> int:
        """Numbers the optimiser trains: the method's tensors plus trained dense leftovers."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def check_float32(model: nn.Module, layout: Layout) -> torch.device:
    """Refuse non-float32 target parameters; return the device the model is on."""
    params = dict(model.named_parameters())
    for t in layout.targets:
        if params[t.name].dtype != torch.float32:
            raise ValueError(f"compression expects float32 parameters, {t.name!r} is "
                             f"{params[t.name].dtype}: call model.float() first (and cast the "
                             "compressed model afterwards if needed)")
    return next(iter(model.parameters())).device
