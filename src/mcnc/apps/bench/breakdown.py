"""Where an MCNC model's time goes: its generator, its mixing and the rest, timed apart.

The weights of an MCNC model are made in three stages (:mod:`mcnc.core.manifold`):

* **generator**: ``beta * phi(alpha)`` for every chunk (:meth:`Generator.chunks`), a small
  MLP evaluated on n m points;
* **mixing**: the chunks end to end through the seeded Hadamard transform, permutation and
  per-entry scale (:meth:`ChunkedManifold.assemble`; with ``mixing="none"`` a slice);
* **rest**: the flat vector cut into the model's weight tensors (and, in delta mode, added to
  the base weights): :func:`mcnc.core.layout.materialize`.

For a reconstruction each stage runs once under ``no_grad``. For training each runs forward and
backward (with a fixed random gradient from above), which is what it adds to a training step;
the model's own forward and backward and the optimiser are the step's remainder.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mcnc.apps.bench.cases import Case
from mcnc.compress import MCNCModel
from mcnc.core.layout import materialize

STAGES = ("generator", "mixing", "rest")


def _stage_functions(model: MCNCModel) -> dict[str, tuple[Callable, torch.Tensor]]:
    """Each stage as a function of its input (a fresh leaf), with that input: the generator
    takes (alpha, beta) inside it and ignores its argument."""
    manifold = model.manifold
    with torch.no_grad():
        flat = manifold.generator.chunks(manifold.alpha, manifold.beta).reshape(-1)
        region = manifold.assemble(flat)[0]

    def generator(_: torch.Tensor) -> torch.Tensor:
        return manifold.generator.chunks(manifold.alpha, manifold.beta)

    def mixing(x: torch.Tensor) -> torch.Tensor:
        return manifold.assemble(x)[0]

    def rest(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([w.reshape(-1) for w in materialize(model.layout, x).values()])

    return {"generator": (generator, flat), "mixing": (mixing, flat), "rest": (rest, region)}


def reconstruction_stages(model: MCNCModel, workload: str, info: dict) -> list[Case]:
    """One case per stage of rebuilding ``model``'s weights (no gradient), in weights/s of the
    whole model, so that the stages' times add up to the full rebuild's. ``info``'s FLOPs per
    weight (the generator's) stay on the generator's row only."""
    cases = []
    for name, (run, x) in _stage_functions(model).items():
        own = {k: v for k, v in info.items()
               if name == "generator" or k != "generation_flops_per_weight"}
        cases.append(Case("reconstruction", workload, f"mcnc: {name}",
                          torch.no_grad()(lambda run=run, x=x: run(x)), model.layout.total,
                          "weights", {**own, "stage": name}, calls=5, warmup=2))
    return cases


def training_stages(model: MCNCModel, workload: str, batch: int) -> list[Case]:
    """One case per stage's forward and backward in a training step of ``model`` (a gradient
    of fixed random values from above), in the step's units (examples of ``batch``)."""
    cases = []
    for name, (run, x) in _stage_functions(model).items():
        leaf = x.detach().clone().requires_grad_(name != "generator")
        upstream = torch.randn_like(run(leaf).detach())

        def step(run=run, leaf=leaf, upstream=upstream):
            model.manifold.zero_grad(set_to_none=True)
            leaf.grad = None
            run(leaf).backward(upstream)

        cases.append(Case("training", workload, f"mcnc: {name} fwd+bwd", step, batch,
                          "examples", {"stage": name, "batch": batch}, calls=5, warmup=3))
    return cases
