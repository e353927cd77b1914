"""The weights a file regenerates on each CUDA device against the CPU's (docs/format.md, 5.2:
equal up to the summation order of matrix products, about 1e-6 relative for small layers and
1e-5 for large generators).

Two workloads: a ResNet-20 MCNC file (3,000 trained numbers, alphas spread over the cube) and
MCNC adapter factors for two layers of LLaMA-7B shape (4096 x 4096, rank 16). The Philox
streams, the generator's weights and R of its output layer are always made on the CPU, so
they are the same bits everywhere; what can differ is the float32 arithmetic of the forward
pass. Writes ``results/device_bits.md`` (and ``.json``); on a machine without CUDA it says
so and compares nothing.

    python benchmarks/device_bits.py --out results/device_bits
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

import mcnc
from mcnc.adapters.sources import AdaptedLayer, FactorLayout, MCNCSource
from mcnc.apps.machine import machine_line
from mcnc.apps.methods import build_method
from mcnc.core.fileformat import tensor_digest
from mcnc.models import resnet20

TOLERANCE = 1e-5
"""Largest allowed ``max |cuda - cpu| / max |cpu|`` per tensor (the spec's bound for large
generators)."""


def resnet_weights(device: str, path: Path) -> dict[str, torch.Tensor]:
    """The file's ResNet-20 weights, generated on ``device``."""
    model = mcnc.load(path, resnet20()).to(device)  # .to() regenerates on the device
    return {k: v.cpu() for k, v in model.dense_state_dict().items()}


def adapter_factors(device: str) -> dict[str, torch.Tensor]:
    """A and B of an MCNC adapter on two 4096 x 4096 layers, generated on ``device``."""
    layout = FactorLayout((AdaptedLayer("a", 4096, 4096), AdaptedLayer("b", 4096, 4096)), 16)
    source = MCNCSource(mcnc.MCNCAdapterConfig(rank=16, d=5000, seed=3), layout)
    with torch.no_grad():
        source.alpha.uniform_(-30, 30, generator=torch.Generator().manual_seed(0))
        source.beta.fill_(0.5)
        a, b = source.to(device).factors()
    return {"A": a.cpu(), "B": b.cpu()}


def compare(cpu: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict:
    worst = 0.0
    for name, value in cpu.items():
        scale = value.abs().max().clamp_min(1e-30)
        worst = max(worst, ((other[name] - value).abs().max() / scale).item())
    return {"identical": tensor_digest(cpu) == tensor_digest(other),
            "max_relative_difference": worst, "within_tolerance": worst <= TOLERANCE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/device_bits", help="path without suffix")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_method("mcnc", resnet20(), 3000)
    with torch.no_grad():
        model.alpha.uniform_(-30, 30)
        model.beta.mul_(torch.rand_like(model.beta) + 0.5)
    with tempfile.TemporaryDirectory() as tmp:
        path = mcnc.save(model, Path(tmp) / "resnet20.mcnc")
        cpu = {"ResNet-20 file": resnet_weights("cpu", path), "7B adapter": adapter_factors("cpu")}
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        rows = []
        for device in devices:
            name = torch.cuda.get_device_name(device)
            other = {"ResNet-20 file": resnet_weights(device, path),
                     "7B adapter": adapter_factors(device)}
            rows += [{"device": f"{device} ({name})", "workload": w, **compare(cpu[w], other[w])}
                     for w in cpu]
    lines = ["# Regenerated weights: CUDA against CPU", "",
             "Command: `python benchmarks/device_bits.py --out results/device_bits`  ",
             f"Machine: {machine_line()}  ", f"torch {torch.__version__}", "",
             f"Tolerance: {TOLERANCE:g} of the largest value of each tensor.", ""]
    if not rows:
        lines.append("No CUDA device on this machine: nothing compared.")
    else:
        lines += ["| device | workload | same bits | max relative difference | within |",
                  "|---|---|---|---:|---|"]
        lines += [f"| {r['device']} | {r['workload']} | {r['identical']} | "
                  f"{r['max_relative_difference']:.2e} | {r['within_tolerance']} |" for r in rows]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"machine": machine_line(), "rows": rows},
                                                   indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
