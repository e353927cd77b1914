"""How alike the MCNC adapter's chunks start: the mean |cosine| between the initial generator
outputs ``phi(alpha_j)`` of different chunks, on SmolLM2-135M's 210 linear layers at the
adapter's default settings, with alphas drawn from the whole cube (the default) and near its
centre (``alpha_init_scale=0.1``, a held-in candidate). No training.

A start near the centre puts every chunk in nearly the same direction; that matters once
``B`` starts nonzero (``b_start``): ``B`` then starts as one direction repeated over its
chunks (before the mixing, which rotates the region as a whole).

    python benchmarks/chunk_directions.py --out results/chunk-directions.md   # ~1 min
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from mcnc.adapters import AdapterModel, MCNCAdapterConfig
from mcnc.adapters.sources import FactorLayout, MCNCSource, d_for_budget
from mcnc.apps.machine import machine_line
from mcnc.llm.models import MODEL_NAMES, build_language_model

BUDGETS = (6_000, 26_880)
SCALES = (1.0, 0.1)
SAMPLE = 2_000
"""Chunks compared (the first ones; every pair among them)."""


def mean_abs_cosine(directions: torch.Tensor) -> float:
    """Mean of ``|cos|`` over all ordered pairs of distinct rows of ``directions`` (n, d)."""
    unit = torch.nn.functional.normalize(directions, dim=1)
    n = unit.shape[0]
    cosines = (unit @ unit.T).abs()
    return ((cosines.sum() - cosines.diagonal().sum()) / (n * n - n)).item()


def initial_directions(layout: FactorLayout, config: MCNCAdapterConfig) -> torch.Tensor:
    """(chunks, d) generator outputs at the adapter's initial alphas (first output of each
    chunk when ``m > 1``)."""
    source = MCNCSource(config, layout)
    manifold = source.manifold
    with torch.no_grad():
        return manifold.generator(manifold.alpha[:SAMPLE, 0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/chunk-directions.md")
    parser.add_argument("--model", default="smollm2-135m", choices=MODEL_NAMES)
    args = parser.parse_args()
    model = AdapterModel(build_language_model(args.model)[0])
    default = MCNCAdapterConfig()
    layout = FactorLayout(model.select_targets(default), default.rank)
    lines = [f"# Initial chunk directions of the MCNC adapter on {args.model}", "",
             f"Command: `python benchmarks/chunk_directions.py --out {args.out}`  ",
             f"Machine: {machine_line()}", "",
             f"Mean |cos| between the initial generator outputs of the first {SAMPLE:,} chunks "
             "or all of them (every pair); for independent random directions in R^d it would "
             "be about sqrt(2 / (pi d)).", "",
             "| budget | d | chunks compared | alphas drawn from | mean abs cos | random "
             "directions |",
             "|---:|---:|---:|---|---:|---:|"]
    for budget in BUDGETS:
        d = d_for_budget(layout, budget, default)
        for scale in SCALES:
            config = replace(default, d=d, alpha_init_scale=scale)
            directions = initial_directions(layout, config)
            where = "the whole cube" if scale == 1 else f"[-{scale:g} L, {scale:g} L]^k"
            lines.append(f"| {budget:,} | {d:,} | {len(directions):,} | {where} | "
                         f"{mean_abs_cosine(directions):.3f} | "
                         f"{(2 / (torch.pi * d)) ** 0.5:.3f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
