"""Reparameterise any ``nn.Module``: its selected weights become ``beta * phi(alpha)`` chunks.

    flat   = concat(selected parameters or their low-rank factors)       (length N)
    chunks = flat, zero-padded to n = ceil(N / d) chunks of d
    chunk j = sum_i beta[j, i] * phi(fold(alpha[j, i])),  i < m           (scratch, lowrank)
    theta  = theta0 + generated                                           (delta)

All chunks come from one batched generator call. Parameters are cut back out of the flat
vector (padding discarded, nothing dropped) and installed on their modules as plain tensors
before the wrapped model runs, so the result behaves as an ordinary module.
"""

from __future__ import annotations

import torch
from torch import nn

from mcnc import rng
from mcnc.config import MCNCConfig
from mcnc.generator import Generator
from mcnc.layout import Layout, materialize, owner_of, plan_layout

ALPHA_INIT_STREAM = 0xA1FA
"""Philox stream of the initial alphas (the generator's layers use streams 0, 1, 2, ...)."""


def fold_into_cube(alpha: torch.Tensor, L: float) -> torch.Tensor:
    """Reflect alpha into [-L, L] (a triangle wave of period 4L); values inside pass unchanged.

    This is how alpha stays in the cube whatever optimiser is used: the map is continuous,
    has slope +-1 everywhere, and :meth:`MCNCModel.fold_alphas_` can apply it to the stored
    parameter at any time without changing the model's output.
    """
    reflected = L - (torch.remainder(alpha + L, 4 * L) - 2 * L).abs()
    return torch.where(alpha.abs() <= L, alpha, reflected)


def generate_flat(generator: Generator, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """All chunks in one generator call.

    Args:
        alpha: (n, m, k); beta: (n, m).

    Returns:
        (n * d,) the chunks laid end to end.
    """
    n, m, k = alpha.shape
    units = generator(fold_into_cube(alpha, generator.spec.L).reshape(n * m, k))
    units = units.view(n, m, -1)
    if m == 1:
        chunks = units[:, 0] * beta
    else:
        chunks = torch.bmm(beta.unsqueeze(1), units).squeeze(1)
    return chunks.reshape(-1)


def initial_alpha(config: MCNCConfig, n_chunks: int) -> torch.Tensor:
    """Uniform on the whole cube, from the seed: the same start on every machine."""
    shape = (n_chunks, config.m, config.k)
    return rng.uniform(config.seed, ALPHA_INIT_STREAM, shape, config.L)


def initial_beta(layout: Layout, params: dict[str, torch.Tensor], config: MCNCConfig
                 ) -> torch.Tensor:
    """Amplitudes that give every chunk the norm the model's own initialisation would have.

    For a directly generated parameter each element should have the mean square of the
    parameter's current (default-initialised) values; a rank-r product ``B @ A`` of factors
    with element variance ``s`` has element variance ``r * s**2``, so factor elements get
    ``s = sqrt(ms / r)``. beta of chunk j is ``sqrt(sum of those over the chunk / m)``, since
    m random unit directions add up to a norm of about ``sqrt(m) * beta``.
    In ``delta`` mode beta starts at 0, so training starts from the pretrained model.

    Returns:
        (n_chunks, m) tensor.
    """
    n, d = layout.n_chunks(config.d), config.d
    if config.mode == "delta":
        return torch.zeros(n, config.m)
    pieces = []
    for t in layout.targets:
        ms = params[t.name].detach().float().pow(2).mean()
        per_element = ms if t.rank is None else (ms / t.rank).sqrt()
        pieces.append(per_element.expand(t.size))
    pieces.append(torch.zeros(n * d - layout.total))
    per_chunk = torch.cat(pieces).view(n, d).sum(dim=1)
    return (per_chunk / config.m).sqrt().unsqueeze(1).expand(n, config.m).clone()


class MCNCModel(nn.Module):
    """A model whose selected weights are generated from ``alpha`` (n, m, k) and ``beta`` (n, m).

    ``parameters()`` yields exactly ``alpha``, ``beta`` and the dense leftovers that train
    (normalisation layers in scratch/lowrank mode). Whenever no gradient can reach alpha or
    beta (``torch.no_grad()``, ``torch.inference_mode()``, or frozen alpha and beta, as in any
    evaluation loop) the generated weights are computed once and reused until alpha, beta, the
    device or the dtype change.
    """

    def __init__(self, base: nn.Module, layout: Layout, config: MCNCConfig,
                 generator: Generator):
        super().__init__()
        params = dict(base.named_parameters())
        n_chunks = layout.n_chunks(config.d)
        self.config, self.layout, self.base, self.generator = config, layout, base, generator
        self.alpha = nn.Parameter(initial_alpha(config, n_chunks))
        self.beta = nn.Parameter(initial_beta(layout, params, config))
        theta0 = None
        if config.mode == "delta":
            theta0 = torch.cat([params[t.name].detach().reshape(-1).float()
                                for t in layout.targets])
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
        with torch.no_grad():
            self._install(self.generated_weights())

    # -- generation -------------------------------------------------------------------------
    def _compute_weights(self) -> dict[str, torch.Tensor]:
        flat = generate_flat(self.generator, self.alpha, self.beta)
        if self.theta0 is not None:
            flat = flat[: self.layout.total] + self.theta0
        return materialize(self.layout, flat)

    def _cache_key(self) -> tuple:
        tensors = (self.alpha, self.beta, *([self.theta0] if self.theta0 is not None else []))
        return tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in tensors)

    def generated_weights(self) -> dict[str, torch.Tensor]:
        """The compressed parameters as tensors, by canonical name (cached when no grad)."""
        needs_grad = torch.is_grad_enabled() and (self.alpha.requires_grad
                                                  or self.beta.requires_grad)
        if needs_grad:
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
        with torch.no_grad():
            self._install(self.generated_weights())
        return self

    # -- utilities --------------------------------------------------------------------------
    @torch.no_grad()
    def fold_alphas_(self) -> MCNCModel:
        """Reflect the stored alphas into [-L, L] in place; the model's output is unchanged."""
        self.alpha.copy_(fold_into_cube(self.alpha, self.config.L))
        return self

    @torch.no_grad()
    def dense_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict of the original, uncompressed architecture (copies, on CPU)."""
        weights = self.generated_weights()
        by_name = {n: weights[t.name] for t in self.layout.targets for n in t.names}
        leftovers = self.base.state_dict()
        return {key: (by_name[key] if key in by_name else leftovers[key]).detach().cpu().clone()
                for key in self.layout.state_keys}

    def dense_leftovers(self) -> dict[str, torch.Tensor]:
        """State entries stored as they are: buffers, and parameters that are not frozen."""
        frozen = {n for n, p in self.base.named_parameters() if not p.requires_grad}
        return {k: v for k, v in self.base.state_dict().items() if k not in frozen}

    def extra_repr(self) -> str:
        c = self.config
        return (f"mode={c.mode}, chunks={self.alpha.shape[0]}, m={c.m}, k={c.k}, d={c.d}, "
                f"L={c.L}, generated={self.layout.total}")


def compress(model: nn.Module, config: MCNCConfig | None = None,
             generator: Generator | None = None) -> MCNCModel:
    """Reparameterise ``model`` with MCNC and return the wrapping :class:`MCNCModel`.

    ``model`` is modified in place: its selected parameters are removed (they are generated
    from now on). In ``scratch`` and ``lowrank`` mode their current values only set the initial
    amplitudes; in ``delta`` mode they become the frozen ``theta0``.

    Args:
        model: any module; its parameters should be float32.
        config: what to compress and how (defaults to :class:`MCNCConfig()`).
        generator: a generator to use instead of the seeded one (e.g. one fitted with
            :func:`mcnc.coverage.fit_generator`); its spec must match ``config``.
    """
    config = config or MCNCConfig()
    if isinstance(model, MCNCModel):
        raise ValueError("this model is already compressed; compress the original model")
    spec = config.generator_spec()
    if generator is None:
        generator = Generator(spec)
    elif generator.spec != spec:
        raise ValueError(f"the generator's spec {generator.spec} does not match the config's "
                         f"{spec}; build the config from the same k, d, L, width, depth, seed")
    return wrap(model, plan_layout(model, config), config, generator)


def wrap(model: nn.Module, layout: Layout, config: MCNCConfig, generator: Generator
         ) -> MCNCModel:
    """Build the :class:`MCNCModel` on the device ``model`` is on (float32 parameters only)."""
    params = dict(model.named_parameters())
    for t in layout.targets:
        if params[t.name].dtype != torch.float32:
            raise ValueError(f"MCNC expects float32 parameters, {t.name!r} is "
                             f"{params[t.name].dtype}: call model.float() first (and cast the "
                             "compressed model afterwards if needed)")
    device = next(iter(model.parameters())).device
    return MCNCModel(model, layout, config, generator).to(device)
