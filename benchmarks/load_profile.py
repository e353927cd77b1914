"""Where loading an MCNC file goes: a cProfile of ``mcnc.reconstruct`` of a ResNet-56 file
(today's defaults, ~10,000 trained numbers), beside the time of rebuilding the same weights in
memory. The profile is of one load after a warm-up load (compiled loops already compiled); every
load draws its frozen mixing afresh, as a process that only loads the file does.

    python benchmarks/load_profile.py --out results/load-profile.md   # ~30 s
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

import mcnc
from mcnc import models
from mcnc.apps.bench.measure import time_calls
from mcnc.apps.machine import machine_line
from mcnc.core.manifold import forget_shared_state

FUNCTIONS = 18
"""Rows of the profile: the functions with the largest cumulative time."""


def rebuild_in_memory(model) -> Callable[[], object]:
    """Every weight tensor recomputed from alpha and beta, the cache emptied first (as the
    bench's in-memory rebuild does)."""
    def run():
        model._cache = None
        with torch.no_grad():
            return model.generated_weights()
    return run


def cold_load(path: Path) -> dict:
    """``mcnc.reconstruct(path)`` drawing its own frozen mixing and entry scales, as a fresh
    process does (the model in memory would otherwise lend it its copy)."""
    forget_shared_state()
    return mcnc.reconstruct(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/load-profile.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = mcnc.compress(models.resnet56(), mcnc.MCNCConfig())
    with tempfile.TemporaryDirectory() as scratch:
        path = mcnc.save(model, Path(scratch) / "resnet56.mcnc")
        load = 1e3 * time_calls(lambda: cold_load(path), repeats=7).median
        memory = 1e3 * time_calls(rebuild_in_memory(model), repeats=7).median
        profile = cProfile.Profile()
        profile.runcall(cold_load, path)
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(FUNCTIONS)
    rows = text.getvalue().split("\n   ncalls", 1)[-1]
    report = "\n".join([
        "# Loading a ResNet-56 MCNC file: where the time goes", "",
        "Command: `python benchmarks/load_profile.py`  ",
        f"Machine: {machine_line()}  ",
        f"`mcnc.reconstruct` of the file: {load:.1f} ms (median of 7); the same weights "
        f"rebuilt in memory: {memory:.1f} ms ({load / memory:.1f}x).", "",
        f"cProfile of one load, the {FUNCTIONS} functions with the largest cumulative time "
        "(seconds; paths shortened to the package):", "",
        "```", "   ncalls" + rows.replace(str(Path(mcnc.__file__).parents[1]) + "/", "").rstrip(),
        "```", ""])
    Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
