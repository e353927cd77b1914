"""Cold loads beside rebuilding in memory, where nothing is shared between loads (every load
draws its mixing's signs and order from its seed, as a process that loads one file does):

* ResNet-56 ``.mcnc`` files of different seeds, ``mcnc.reconstruct`` of each in one process:
  the first load (numba's compiled loops read from their disk cache on first use) and the
  median of the others;
* a rank-16 MCNC adapter folder with 6,000 trained numbers on SmolLM2-135M's layer shapes
  (shapes only, no model): read, checked and its factors generated, against generating the
  factors of the adapter in memory;
* the seeded order alone (``mcnc.core.mixing.seeded_order``, random words included) for
  2^20 and 2^22 keys on one thread and on two.

    python benchmarks/cold_loads.py --files 6   # ~30 s
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
from pathlib import Path

import torch

import mcnc
from mcnc import models
from mcnc.adapters.files import read_adapter, source_from_tensors, write_adapter
from mcnc.apps.bench.measure import time_calls
from mcnc.apps.bench.peers_rebuild import mcnc_source
from mcnc.apps.bench.reconstruction import llama7b_targets
from mcnc.apps.machine import machine_line
from mcnc.core.manifold import forget_shared_state
from mcnc.core.mixing import seeded_order

SMOLLM2_SHAPES = {"blocks": 30, "hidden": 576, "intermediate": 1536}
"""SmolLM2-135M's block count and widths (its k and v projections are narrower: here they
are as wide as q, which makes the adapter a little larger)."""


def resnet_loads(files: int, scratch: Path) -> list[float]:
    """Milliseconds of ``mcnc.reconstruct`` of ResNet-56 files of ``files`` seeds, in order."""
    torch.manual_seed(0)
    paths = [mcnc.save(mcnc.compress(models.resnet56(), mcnc.MCNCConfig(seed=seed)),
                       scratch / f"resnet56-{seed}.mcnc") for seed in range(files)]
    forget_shared_state()
    return [1e3 * time_calls(lambda p=p: mcnc.reconstruct(p), repeats=1, warmup=0).median
            for p in paths]


def adapter_loads(repeats: int, scratch: Path) -> tuple[float, float]:
    """Median milliseconds of the adapter's factors from its folder (cold: read, checked and
    built as ``AdapterModel.load_adapter`` builds it) and in memory."""
    source = mcnc_source(llama7b_targets(**SMOLLM2_SHAPES), 6_000)
    write_adapter(scratch / "adapter", source, None, None)

    @torch.no_grad()
    def from_folder():
        forget_shared_state()
        config, layout, tensors, _ = read_adapter(scratch / "adapter")
        return source_from_tensors(config, layout, tensors).factors()

    in_memory = torch.no_grad()(source.factors)
    return (1e3 * time_calls(from_folder, repeats).median,
            1e3 * time_calls(in_memory, repeats).median)


def order_times(repeats: int) -> dict[tuple[int, int], float]:
    """Median milliseconds of the seeded order by (keys, threads)."""
    times, before = {}, torch.get_num_threads()
    try:
        for keys, threads in itertools.product((1 << 20, 1 << 22), (1, 2)):
            torch.set_num_threads(threads)
            times[keys, threads] = 1e3 * time_calls(lambda n=keys: seeded_order(0, 1, n),
                                                    repeats).median
    finally:
        torch.set_num_threads(before)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        loads = resnet_loads(args.files, Path(scratch))
        cold, warm = adapter_loads(args.files, Path(scratch))
    orders = order_times(args.files)
    print(f"{machine_line()}\nResNet-56 file: first load {loads[0]:.1f} ms, the "
          f"{len(loads) - 1} others: median {statistics.median(loads[1:]):.1f} ms\n"
          f"SmolLM2-shaped adapter, 6,000 numbers: from its folder {cold:.0f} ms, in memory "
          f"{warm:.0f} ms ({cold / warm:.1f}x)")
    for (keys, threads), ms in orders.items():
        print(f"seeded order of {keys:,} keys on {threads} thread(s): {ms:.1f} ms")


if __name__ == "__main__":
    main()
