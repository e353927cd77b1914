"""How evenly does ``phi`` cover the sphere? Sliced Wasserstein diagnostics and fitting.

``phi`` should push the uniform distribution on the cube ``[-L, L]^k`` to (close to) the
uniform distribution on ``S^(d-1)``. We measure that with the sliced Wasserstein distance

    SW_2(P, Q)^2 = E_theta [ W_2^2(theta . P, theta . Q) ],  theta ~ U(S^(d-1)),

estimated with random directions and sorted one-dimensional projections. A projection of the
uniform sphere has standard deviation 1/sqrt(d), so the distance is reported in units of
that (``sw * sqrt(d)``), next to the same estimate between two independent uniform samples:
the noise floor of the estimate at that sample size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mcnc.core.generator import Generator, GeneratorSpec, generator_forward


def uniform_sphere(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """(n, d) points uniform on the unit sphere (normalised Gaussians)."""
    return torch.nn.functional.normalize(torch.randn(n, d, generator=generator), dim=1)


def uniform_cube(n: int, k: int, L: float, generator: torch.Generator) -> torch.Tensor:
    """(n, k) points uniform on [-L, L]^k."""
    return (2 * torch.rand(n, k, generator=generator) - 1) * L


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor
                       ) -> torch.Tensor:
    """Sliced 2-Wasserstein distance between two equal-size samples.

    Args:
        x, y: (n, d) samples.
        directions: (p, d) unit vectors to project on.

    Returns:
        scalar tensor (differentiable in x and y).
    """
    if x.shape != y.shape:
        raise ValueError(f"samples must have the same shape, got {x.shape} and {y.shape}")
    px = torch.sort(x @ directions.T, dim=0).values
    py = torch.sort(y @ directions.T, dim=0).values
    return (px - py).pow(2).mean().sqrt()


@dataclass
class Coverage:
    """Sliced Wasserstein distances in units of 1/sqrt(d)."""

    sw: float
    """Between phi(U(cube)) and U(sphere)."""
    floor: float
    """Between two independent U(sphere) samples of the same size (estimator noise)."""

    @property
    def excess(self) -> float:
        """``sw / floor``: 1 means indistinguishable from uniform at this sample size."""
        return self.sw / self.floor


@torch.no_grad()
def coverage(phi: Generator | GeneratorSpec, samples: int = 4096, projections: int = 256,
             seed: int = 0) -> Coverage:
    """Measure how uniformly ``phi`` covers the sphere (see module docstring)."""
    phi = Generator(phi) if isinstance(phi, GeneratorSpec) else phi
    spec = phi.spec
    g = torch.Generator().manual_seed(seed)
    directions = uniform_sphere(projections, spec.d, g)
    target = uniform_sphere(samples, spec.d, g)
    other = uniform_sphere(samples, spec.d, g)
    produced = phi(uniform_cube(samples, spec.k, spec.L, g))
    scale = math.sqrt(spec.d)
    return Coverage(sw=sliced_wasserstein(produced, target, directions).item() * scale,
                    floor=sliced_wasserstein(other, target, directions).item() * scale)


def fit_generator(spec: GeneratorSpec, steps: int = 300, batch: int = 1024,
                  projections: int = 128, lr: float = 1e-3, seed: int = 0,
                  progress: bool = True) -> Generator:
    """Train ``phi`` (from its seeded start) to push U(cube) to U(sphere), as in the paper.

    Minimises the squared sliced Wasserstein distance with Adam. The returned generator is
    marked ``fitted``: its weights are written into .mcnc files, not just its seed.
    """
    weights = [w.clone().requires_grad_() for w in Generator(spec).weights]
    optimizer = torch.optim.Adam(weights, lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc="fitting generator", disable=not progress):
        alpha = uniform_cube(batch, spec.k, spec.L, g)
        produced = torch.nn.functional.normalize(
            generator_forward(alpha, weights, spec.activation), dim=1)
        loss = sliced_wasserstein(produced, uniform_sphere(batch, spec.d, g),
                                  uniform_sphere(projections, spec.d, g)).pow(2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return Generator(spec, [w.detach() for w in weights])


def plot_curves(path: str, L: float = GeneratorSpec.L, width: int = GeneratorSpec.width,
                depth: int = GeneratorSpec.depth, hidden_gain: float = GeneratorSpec.hidden_gain,
                seed: int = 0, points: int = 4000) -> None:
    """The paper's Figure 2: a k=1 generator winds [-L, L] around the sphere in R^3,
    seeded sine vs ReLU networks side by side, written to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = torch.linspace(-L, L, points).unsqueeze(1)
    fig = plt.figure(figsize=(10, 5))
    u, v = torch.meshgrid(torch.linspace(0, math.pi, 30), torch.linspace(0, 2 * math.pi, 60),
                          indexing="ij")
    for i, activation in enumerate(("sine", "relu")):
        spec = GeneratorSpec(k=1, d=3, L=L, width=width, depth=depth, hidden_gain=hidden_gain,
                             activation=activation, seed=seed)
        with torch.no_grad():
            curve = Generator(spec)(t)
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        ax.plot_wireframe(u.sin() * v.cos(), u.sin() * v.sin(), u.cos(), color="0.85",
                          linewidth=0.3)
        ax.plot(curve[:, 0], curve[:, 1], curve[:, 2], linewidth=0.8,
                color="tab:blue" if activation == "sine" else "tab:red")
        score = coverage(spec, samples=2048).sw
        ax.set_title(f"{activation}: phi([-{L:g}, {L:g}]) on S^2\nSW = {score:.3f} / sqrt(d)")
        ax.set_box_aspect((1, 1, 1))
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
