"""The frozen generator ``phi: [-L, L]^k -> S^(d-1)`` that winds a cube around the sphere.

``phi`` is a small multi-layer perceptron with sine activations (the default) whose weights
are regenerated from an integer seed by :mod:`mcnc.core.rng`::

    h_1 = sin(W_1 alpha + b_1)                 W_1 ~ U(+-1/k),                b_1 ~ U(+-pi)
    h_t = sin(W_t h_(t-1) + b_t), t = 2..depth  W_t ~ U(+-gain * sqrt(6/width)), b_t ~ U(+-pi)
    y   = W_out h_depth                         W_out ~ U(+-sqrt(6/width))
    phi(alpha) = y / ||y||

``relu`` replaces the sine by max(0, .); ``linear`` drops it and the biases (a control: see
``ACTIVATIONS``).

Design notes (the measurements behind them are in docs/design.md, "Generator design"):

* alpha is used raw, in [-L, L]. With ``W_1 ~ U(+-1/k)`` the first layer is a SIREN first
  layer whose frequency is L (Sitzmann et al. 2020 scale inputs in [-1, 1] by omega_0 = 30):
  L sets how many times the cube is wound around the sphere, as in the paper.
* Hidden layers use the SIREN initialisation scaled by ``hidden_gain`` (pre-activations of
  unit variance for ``gain=1``). A larger gain winds the manifold more tightly: it covers the
  sphere better and trains to higher accuracy (docs/design.md, "Generator design").
* Random phases ``b ~ U(+-pi)`` keep ``phi(0)`` well defined (without them ``sin(0) = 0`` and
  the output norm is zero) and break the odd symmetry ``phi(-alpha) = -phi(alpha)``.
* The output layer has no bias; its scale does not matter because the output is normalised.

Weights for layer t (0-based, the output layer last) come from stream ``2t`` of the seed and
biases from stream ``2t + 1``, entries in row-major order of the ``(out, in)`` matrix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from mcnc.core import rng
from mcnc.core.limits import (
    MAX_D,
    MAX_DEPTH,
    MAX_GENERATOR_WEIGHTS,
    MAX_K,
    MAX_SEED,
    MAX_WIDTH,
    is_int,
    is_number,
)

ACTIVATIONS = ("sine", "relu", "linear")
"""``linear`` is a control, not a manifold: no activation and no biases, so ``phi(alpha) =
A alpha / ||A alpha||`` with ``A = W_out W_depth ... W_1`` (d x k) and ``beta * phi(alpha)``
reaches every vector of the k-dimensional random subspace spanned by A's columns (alpha only
sets the direction, so the cube restricts nothing): a random linear subspace per chunk, with
the same chunks, numbers and mixing as MCNC (stored in version-2 files)."""
GENERATOR_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
"""The floating-point types the generator computes in (sine and matrix products need them)."""
NORM_EPS = 1e-12
"""Smallest output norm divided by (as in ``F.normalize``)."""


@dataclass(frozen=True)
class GeneratorSpec:
    """Everything needed to rebuild ``phi`` bit for bit (stored in every .mcnc file)."""

    k: int = 16
    """Manifold dimension: the number of alpha coordinates per chunk."""
    d: int = 1600
    """Chunk size: the number of weights one generator output covers."""
    L: float = 20.0
    """Half-width of the cube: alpha lives in [-L, L]^k (the paper's L)."""
    width: int = 64
    """Hidden width of the generator MLP."""
    depth: int = 2
    """Number of hidden (activated) layers; the output layer is linear."""
    activation: str = "sine"
    """``"sine"`` (MCNC) or ``"relu"`` (for comparisons, as in the paper's Figure 2)."""
    hidden_gain: float = 8.0
    """Scale of the hidden-layer initialisation relative to SIREN's ``sqrt(6/width)``."""
    seed: int = 0
    """Seed of the Philox4x32-10 streams the weights are drawn from."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field to change if the spec is unusable."""
        k_ok, d_ok = is_int(self.k, 1, MAX_K), is_int(self.d, 2, MAX_D)
        sized = (k_ok and d_ok and is_int(self.width, 1, MAX_WIDTH)
                 and is_int(self.depth, 1, MAX_DEPTH))
        checks = [
            (k_ok, f"k must be an integer in [1, {MAX_K}]"),
            (d_ok, f"d must be an integer in [2, {MAX_D}]"),
            (not (k_ok and d_ok) or self.k < self.d,
             "k must be smaller than d (otherwise nothing is compressed): raise d or lower k"),
            (is_number(self.L, 0, 1e6), "L must be a positive finite number below 1e6"),
            (is_int(self.width, 1, MAX_WIDTH), f"width must be an integer in [1, {MAX_WIDTH}]"),
            (is_int(self.depth, 1, MAX_DEPTH), f"depth must be an integer in [1, {MAX_DEPTH}]"),
            (not sized or self.weight_count() <= MAX_GENERATOR_WEIGHTS,
             f"the generator would have more than {MAX_GENERATOR_WEIGHTS:,} weights; lower "
             "width, depth or d"),
            (self.activation in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}"),
            (is_number(self.hidden_gain, 0, 1e3), "hidden_gain must be a positive number"),
            (is_int(self.seed, 0, MAX_SEED), "seed must be an integer in [0, 2**64)"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            settings = ", ".join(f"{f.name}={getattr(self, f.name)!r}"
                                 for f in fields(GeneratorSpec))
            raise ValueError(f"invalid generator settings ({settings}): " + "; ".join(problems))

    def layer_shapes(self) -> list[tuple[int, int]]:
        """``(out, in)`` of each layer, the output layer last."""
        dims = [self.k] + [self.width] * self.depth + [self.d]
        return [(dims[t + 1], dims[t]) for t in range(len(dims) - 1)]

    def weight_count(self) -> int:
        """Numbers in all of the generator's tensors (weights and biases)."""
        return sum(o * i + (o if t < self.depth else 0)
                   for t, (o, i) in enumerate(self.layer_shapes()))

    def flops_per_vector(self) -> int:
        """Multiply-adds x 2 to generate one d-dimensional output (bias and sine not counted)."""
        return 2 * sum(o * i for o, i in self.layer_shapes())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GeneratorSpec:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown generator spec fields {sorted(unknown)}")
        return cls(**data)


def fold_into_cube(alpha: torch.Tensor, L: float) -> torch.Tensor:
    """Reflect alpha into [-L, L] (a triangle wave of period 4L); values inside pass unchanged.

    This is how alpha stays in the cube whatever optimiser is used: the map is continuous,
    has slope +-1 everywhere, and it can be applied to a stored alpha at any time without
    changing the chunks it generates.
    """
    reflected = L - (torch.remainder(alpha + L, 4 * L) - 2 * L).abs()
    return torch.where(alpha.abs() <= L, alpha, reflected)


def initial_alpha(spec: GeneratorSpec, n_chunks: int, m: int = 1, scale: float = 1.0
                  ) -> torch.Tensor:
    """(n_chunks, m, k) starting points uniform on ``[-scale L, scale L]^k`` (the whole cube
    by default), drawn from the spec's seed: the same start on every machine and every
    data-parallel process."""
    return rng.uniform(spec.seed, rng.ALPHA_INIT_STREAM, (n_chunks, m, spec.k), spec.L * scale)


def seeded_weights(spec: GeneratorSpec) -> list[torch.Tensor]:
    """Regenerate the generator's tensors from ``spec.seed``.

    Returns:
        ``[W_1, b_1, ..., W_depth, b_depth, W_out]`` as float32 CPU tensors, ``W_t`` of shape
        ``(out, in)`` and ``b_t`` of shape ``(out,)``.
    """
    tensors = []
    for t, (fan_out, fan_in) in enumerate(spec.layer_shapes()):
        if t == 0:
            bound = 1.0 / spec.k
        elif t < spec.depth:
            bound = spec.hidden_gain * math.sqrt(6.0 / fan_in)
        else:
            bound = math.sqrt(6.0 / fan_in)
        stream = rng.GENERATOR_LAYER_STREAM + 2 * t
        tensors.append(rng.uniform(spec.seed, stream, (fan_out, fan_in), bound))
        if t < spec.depth:
            tensors.append(rng.uniform(spec.seed, stream + 1, (fan_out,), math.pi))
    return tensors


def hidden_forward(
    alpha: torch.Tensor, weights: list[torch.Tensor], activation: str = "sine"
) -> torch.Tensor:
    """The last hidden layer ``h_depth`` (see module docstring): (n, k) -> (n, width)."""
    h = alpha
    if activation == "linear":  # the control: no activation and no biases
        for t in range(0, len(weights) - 1, 2):
            h = F.linear(h, weights[t])
        return h
    act = torch.sin if activation == "sine" else F.relu
    for t in range(0, len(weights) - 1, 2):
        h = act(F.linear(h, weights[t], weights[t + 1]))
    return h


def generator_forward(
    alpha: torch.Tensor, weights: list[torch.Tensor], activation: str = "sine"
) -> torch.Tensor:
    """Unnormalised generator output ``y`` (see module docstring).

    Args:
        alpha: (n, k) points of the cube.
        weights: tensors as returned by :func:`seeded_weights`.

    Returns:
        (n, d) tensor.
    """
    return F.linear(hidden_forward(alpha, weights, activation), weights[-1])


class Generator(nn.Module):
    """``phi`` as a module. Its tensors are non-persistent buffers: they come from the seed,
    or, for a generator fitted with :func:`mcnc.apps.coverage.fit_generator`, from the file."""

    def __init__(self, spec: GeneratorSpec, weights: list[torch.Tensor] | None = None):
        super().__init__()
        self.spec = spec
        self.fitted = weights is not None
        weights = seeded_weights(spec) if weights is None else weights
        expected = [tuple(s) for s in seeded_weights_shapes(spec)]
        if [tuple(w.shape) for w in weights] != expected:
            raise ValueError(f"generator tensors have shapes {[tuple(w.shape) for w in weights]},"
                             f" expected {expected} for {spec}")
        for i, w in enumerate(weights):
            self.register_buffer(f"w{i}", w.detach().clone().float(), persistent=False)
        self._factor_cache: tuple[tuple, torch.Tensor] | None = None
        self._norm_factor(self.weights[-1])  # eagerly, so a compiled forward finds it

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._factor_cache = None
        if not self.weights[-1].is_meta:  # a meta tensor holds no values to factor
            self._norm_factor(self.weights[-1])  # for the new device or dtype, eagerly
        return self

    @property
    def weights(self) -> list[torch.Tensor]:
        return list(self.buffers())

    def check_dtype(self, alpha: torch.Tensor) -> None:
        """Raise ``ValueError`` if the weights or ``alpha`` are not a type it computes in."""
        dtype = self.weights[0].dtype
        if dtype not in GENERATOR_DTYPES or alpha.dtype not in GENERATOR_DTYPES:
            raise ValueError(f"the generator computes in float32, float64, float16 or bfloat16, "
                             f"not {dtype} (weights) / {alpha.dtype} (alphas); cast the model "
                             "with .float(), .double(), .half() or .bfloat16()")

    def raw(self, alpha: torch.Tensor) -> torch.Tensor:
        """(n, k) -> (n, d) unnormalised output."""
        self.check_dtype(alpha)
        return generator_forward(alpha, self.weights, self.spec.activation)

    def forward(self, alpha: torch.Tensor) -> torch.Tensor:
        """(n, k) points of the cube -> (n, d) unit vectors."""
        return F.normalize(self.raw(alpha), dim=-1)

    def _norm_factor(self, w_out: torch.Tensor) -> torch.Tensor:
        """``R`` of ``W_out = Q R`` (QR in float64, then cast): ``||W_out h|| = ||R h||`` for
        every h. Kept until ``W_out`` changes (recomputed, differentiably, if it trains)."""
        if w_out.requires_grad:
            return torch.linalg.qr(w_out.double(), mode="reduced").R.to(w_out.dtype)
        if torch.compiler.is_compiling():  # versions and pointers cannot be traced
            cached = self._factor_cache  # made at construction and after every move or cast
            if (cached is not None and cached[1].dtype == w_out.dtype
                    and cached[1].device == w_out.device):
                return cached[1]
            return torch.linalg.qr(w_out.double(), mode="r").R.to(w_out.dtype)
        key = (w_out._version, w_out.data_ptr(), w_out.dtype, w_out.device)
        if self._factor_cache is None or self._factor_cache[0] != key:
            r = _qr_factor(w_out.detach()).to(w_out.device, w_out.dtype)
            self._factor_cache = (key, r)
        return self._factor_cache[1]

    def fold(self, alpha: torch.Tensor) -> torch.Tensor:
        """``alpha`` reflected into this generator's cube ``[-L, L]^k``."""
        return fold_into_cube(alpha, self.spec.L)

    def chunks(self, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """The chunks ``sum_i beta[:, i] * phi(fold(alpha[:, i]))`` in one batched call.

        Args:
            alpha: (n, m, k) points, anywhere (they are folded into the cube first).
            beta: (n, m) amplitudes.

        Returns:
            (n, d) tensor.
        """
        self.check_dtype(alpha)  # before the fold, which needs a real type too
        return self.combine(self.fold(alpha), beta)

    def combine(self, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """``sum_i beta[:, i] * phi(alpha[:, i])`` for (n, m, k) alphas already in the cube
        and (n, m) betas: (n, d).

        The output layer is linear, so the whole sum is one product with ``W_out``::

            sum_i beta_i * W_out h_i / ||W_out h_i|| = W_out z,
            z = sum_i h_i * beta_i / ||R h_i||,      W_out = Q R  (R: width x width)

        Norms, amplitudes and the sum over m all happen on (n, width) tensors; the single
        (n, width) x (width, d) product writes the chunks directly, and nothing of size (n, d)
        is kept for the backward pass (it needs ``z`` and ``W_out`` only). ``||R h||`` is a
        norm of a short vector, as accurate as summing the squares of the long output.
        """
        n, m, k = alpha.shape
        weights = self.weights
        h = hidden_forward(alpha.reshape(n * m, k), weights, self.spec.activation)
        w_out = weights[-1]
        norms = torch.linalg.vector_norm(h @ self._norm_factor(w_out).T, dim=-1)
        scale = beta / norms.view(n, m).clamp_min(NORM_EPS).to(beta.dtype)
        z = (h.view(n, m, -1) * scale.unsqueeze(-1).to(h.dtype)).sum(1)
        return F.linear(z, w_out)


def _qr_factor(w: torch.Tensor) -> torch.Tensor:
    """``R`` of ``w = Q R`` in float64 on the CPU with one thread: LAPACK's QR gives different
    last bits with different thread counts (and devices), and the generated weights must not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.qr(w.double().cpu(), mode="r").R
    finally:
        torch.set_num_threads(threads)


def seeded_weights_shapes(spec: GeneratorSpec) -> list[torch.Size]:
    """Shapes of the tensors :func:`seeded_weights` returns, without generating them."""
    shapes = []
    for t, shape in enumerate(spec.layer_shapes()):
        shapes.append(torch.Size(shape))
        if t < spec.depth:
            shapes.append(torch.Size(shape[:1]))
    return shapes
