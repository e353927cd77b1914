"""Cold loads of ResNet-56 MCNC files: ``mcnc.reconstruct`` of files of different seeds in one
process, so that no load finds a drawn mixing to share (each draws its signs and order from
its seed, as a process that loads one file does). Prints the first load (numba's compiled
loops read from their disk cache on first use) and the median of the others.

    python benchmarks/cold_loads.py --files 6   # ~20 s
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import mcnc
from mcnc import models
from mcnc.apps.machine import machine_line
from mcnc.core.manifold import forget_shared_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        paths = [mcnc.save(mcnc.compress(models.resnet56(), mcnc.MCNCConfig(seed=seed)),
                           Path(scratch) / f"resnet56-{seed}.mcnc") for seed in range(args.files)]
        forget_shared_state()
        times = []
        for path in paths:
            start = time.perf_counter()
            mcnc.reconstruct(path)
            times.append(1e3 * (time.perf_counter() - start))
    print(f"{machine_line()}\nfirst load {times[0]:.1f} ms, the {len(times) - 1} others: "
          f"median {statistics.median(times[1:]):.1f} ms")


if __name__ == "__main__":
    main()
