"""Reconstruction speed: how many weights per second each method rebuilds from its trained
numbers, at equal budget, beside the bound this machine sets.

Two workloads:

* ``resnet56``: every conv and linear weight of a CIFAR ResNet-56 in scratch mode (MCNC,
  PRANC, NOLA built by :func:`mcnc.apps.methods.build_method` with the same budget). Timed as the
  computation of all weight tensors from the model's trained numbers (``warm``: frozen
  generator or bases already in memory when they fit) and as ``mcnc.reconstruct`` of a saved
  file (``cold``: from the file and the seed alone, what a user loading a model pays).
* ``llama7b-adapters``: the rank-16 factors of every linear layer of the 32 transformer blocks
  of a 7B LLaMA (shapes only). MCNC with the paper's generator (k=5, width 32, d=5000), NOLA
  with the same number of coefficients shared over the 448 factors, PRANC with one basis over
  all of them. NOLA and PRANC bases (17 GB and 7.7 TB) are generated on the fly; PRANC is timed
  on a slice of its basis and scaled (its cost is linear in the number of coefficients).

The full ``(out, in)`` deltas of the same 7B adapters and of SmolLM2-135M's, MCNC beside peft's
Uni-LoRA, VeRA and FourierFT, are in :mod:`mcnc.apps.bench.peers_rebuild`.

The bound of a generator is ``min(GEMM rate / FLOPs per weight, write rate / 4 bytes)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

import mcnc
from mcnc.adapters.config import MCNCAdapterConfig, NOLAAdapterConfig
from mcnc.adapters.sources import AdaptedLayer, FactorLayout, MCNCSource, NOLASource
from mcnc.apps.bench.breakdown import reconstruction_stages
from mcnc.apps.bench.cases import Case
from mcnc.apps.methods import build_method
from mcnc.baselines.basis import RandomBasis
from mcnc.core import rng
from mcnc.core.initialisation import UNIT_BOUND
from mcnc.core.manifold import forget_shared_state
from mcnc.core.reparam import Reparameterized

PRANC_SLICE_COEFFICIENTS = 256
"""Coefficients of the slice of PRANC's adapter basis that is actually timed."""


def llama7b_targets(blocks: int = 32, hidden: int = 4096, intermediate: int = 11008
                    ) -> tuple[AdaptedLayer, ...]:
    """Every linear layer of a LLaMA-7B's transformer blocks (the output head excluded)."""
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden, hidden),
              "self_attn.v_proj": (hidden, hidden), "self_attn.o_proj": (hidden, hidden),
              "mlp.gate_proj": (intermediate, hidden), "mlp.up_proj": (intermediate, hidden),
              "mlp.down_proj": (hidden, intermediate)}
    return tuple(AdaptedLayer(f"model.layers.{i}.{name}", out, in_)
                 for i in range(blocks) for name, (out, in_) in shapes.items())


def _rebuild(model: Reparameterized) -> Callable[[], object]:
    """All weight tensors from the trained numbers, the cache emptied first."""
    def rebuild():
        model._cache = None
        with torch.no_grad():
            return model.generated_weights()
    return rebuild


def _from_file(path: Path) -> Callable[[], object]:
    """``mcnc.reconstruct(path)`` with nothing shared from a live model (its drawn mixing and
    entry scales are forgotten first), as a process that only loads the file pays it."""
    def load():
        forget_shared_state()
        return mcnc.reconstruct(path)
    return load


def _trained(model: Reparameterized) -> int:
    return sum(t.numel() for t in model.method_tensors().values())


def _generation_flops(model: Reparameterized) -> int:
    if model.method == "mcnc":
        spec, n = model.generator.spec, model.alpha.shape[0] * model.alpha.shape[1]
        return n * (spec.flops_per_vector() + 2 * spec.d)
    return sum(2 * b.size * b.n for b in model.bases)


def model_cases(workload: str, build: Callable[[], torch.nn.Module], budget: int,
                folder: Path) -> tuple[list[Case], list[Case]]:
    """MCNC, NOLA and PRANC on ``build()`` in scratch mode at ``budget``: the warm cases
    (computing the weights of a model in memory) and the cold ones (``mcnc.reconstruct`` of a
    file saved in ``folder``)."""
    warm, cold = [], []
    for method in ("mcnc", "nola", "pranc"):
        torch.manual_seed(0)
        model = build_method(method, build(), budget)
        info = {"trained": _trained(model),
                "generation_flops_per_weight": _generation_flops(model) / model.layout.total}
        path = folder / f"{workload}-{method}.mcnc"
        mcnc.save(model, path)
        slow = method == "pranc"
        warm.append(Case("reconstruction", workload, method, _rebuild(model),
                         model.layout.total, "weights", info, calls=1 if slow else 5,
                         warmup=1 if slow else 2))
        if method == "mcnc":  # its stages, as a share of its time (the group's reference)
            warm += reconstruction_stages(model, workload, info)
        cold.append(Case("reconstruction", f"{workload} (from file)", method, _from_file(path),
                         model.layout.total, "weights", info, calls=1 if slow else 3,
                         warmup=1))
    return warm, cold


def adapter_cases(targets: tuple[AdaptedLayer, ...], workload: str, rank: int = 16,
                  pranc_columns: int = PRANC_SLICE_COEFFICIENTS) -> list[Case]:
    """MCNC (the paper's LLaMA generator), NOLA (on the fly) and PRANC (one basis, timed on
    ``pranc_columns`` of its columns and scaled) rebuilding the rank-``rank`` factors of
    ``targets`` at the same number of trained numbers."""
    layout = FactorLayout(targets, rank)
    weights = layout.total_a + layout.total_b
    mcnc_source = MCNCSource(MCNCAdapterConfig(rank=rank), layout)
    budget = mcnc_source.alpha.numel() + mcnc_source.beta.numel()
    nola_source = NOLASource(NOLAAdapterConfig(rank=rank, coefficients=budget), layout,
                             max_basis_bytes=0)
    columns = min(budget, pranc_columns)
    pranc_basis = RandomBasis(0, rng.PRANC_BASIS_STREAM, weights, columns,
                              torch.full((weights,), 1 / UNIT_BOUND), max_bytes=0)
    coefficients = torch.ones(columns)
    cases = []
    for name, run, flops, extra in (
        ("mcnc", mcnc_source.factors, mcnc_source.generation_flops(), {}),
        ("nola", nola_source.factors, nola_source.generation_flops(), {}),
        ("pranc", lambda: pranc_basis.apply(coefficients), 2 * weights * budget,
         {"time_scale": budget / columns}),
    ):
        cases.append(Case("reconstruction", workload, name, torch.no_grad()(run), weights,
                          "weights", {"trained": budget,
                                      "generation_flops_per_weight": flops / weights},
                          calls=5 if name == "mcnc" else 1, warmup=2 if name == "mcnc" else 1,
                          **extra))
    cases[-1].info["note"] = (f"timed on {columns} of the {budget} basis columns and scaled "
                              "(the cost is linear in the columns)")
    return cases


def generator_bound(gemm_flops_per_s: float, write_bytes_per_s: float,
                    flops_per_weight: float) -> dict:
    """The weights/s a generator costing ``flops_per_weight`` can reach on this machine:
    ``min(GEMM rate / FLOPs per weight, write rate / 4 bytes)``."""
    by_gemm, by_write = gemm_flops_per_s / flops_per_weight, write_bytes_per_s / 4
    return {"by_gemm": by_gemm, "by_write": by_write, "bound": min(by_gemm, by_write)}
