"""How fast the seeded Hadamard mixing is, with the compiled loops and without.

Times, in alternating rounds on this machine with one torch thread (medians, and the median of
the per-round ratios):

* the transform ``H x`` by the compiled loops (``hadamard``) and by PyTorch's one pass per
  level (``butterfly_passes``, the path without numba), which give the same bits;
* the mixing's permutation from the seed, random words included: ``seeded_order`` (the
  integer keys sorted by the compiled counting sort, or by PyTorch without numba) against the
  stable float sort it replaced (same order);
* one forward and backward of a whole ``SeededMixing`` by the compiled loops and by PyTorch's
  separate steps, and by the compiled loops on two threads against one.

    python benchmarks/mixing_speed.py [--out results/mixing-speed.md]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import mcnc.core.mixing as mixing
import mcnc.core.mixing_kernels as mixing_kernels
from mcnc.apps.machine import machine_line
from mcnc.core import rng

LENGTHS = (1 << 14, 1 << 18, 1 << 20)


def timed(variants: dict[str, Callable[[], object]], rounds: int = 7, calls: int = 5
          ) -> dict[str, float]:
    """Median seconds per call of each variant, the variants taking turns in every round; the
    second variant's per-round ratio to the first goes under ``"ratio"``."""
    for run in variants.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            for _ in range(calls):
                run()
            times[name].append((time.perf_counter() - start) / calls)
    first, second = list(times.values())[:2]
    out = {name: statistics.median(t) for name, t in times.items()}
    out["ratio"] = statistics.median(b / a for a, b in zip(first, second, strict=True))
    return out


def with_passes(run: Callable[[], object]) -> Callable[[], object]:
    """``run`` with the compiled transform switched off (PyTorch's passes instead)."""
    def passes():
        saved = mixing_kernels._compiled.get("loops")
        mixing_kernels._compiled["loops"] = None
        try:
            return run()
        finally:
            mixing_kernels._compiled["loops"] = saved
    return passes


def rows() -> list[str]:
    out = []
    for n in LENGTHS:
        x = torch.randn(n)
        t = timed({"compiled": lambda x=x: mixing.hadamard(x),
                   "passes": lambda x=x: mixing.butterfly_passes(x)})
        out.append(f"| H x, {n:,} entries | {1e3 * t['compiled']:.3f} ms | "
                   f"{1e3 * t['passes']:.3f} ms | {t['ratio']:.2f}x |")
    stream = rng.MIXING_PERMUTATION_STREAM
    for n in LENGTHS:
        t = timed({"integers": lambda n=n: mixing.seeded_order(0, stream, n),
                   "floats": lambda n=n: torch.argsort(rng.uniform(0, stream, (n,), 1.0),
                                                       stable=True)})
        out.append(f"| permutation from the seed, {n:,} entries | {1e3 * t['integers']:.3f} ms"
                   f" | {1e3 * t['floats']:.3f} ms | {t['ratio']:.2f}x |")
    for n in LENGTHS:
        mix = mixing.SeededMixing(n, n, 0)
        x = torch.randn(n, requires_grad=True)
        upstream = torch.randn(n)

        def step(mix=mix, x=x, upstream=upstream):
            x.grad = None
            mix(x).backward(upstream)

        t = timed({"compiled": step, "passes": with_passes(step)})
        out.append(f"| mixing forward + backward, {n:,} entries | {1e3 * t['compiled']:.3f} ms"
                   f" | {1e3 * t['passes']:.3f} ms | {t['ratio']:.2f}x |")
        t = timed({"two": on_threads(2, step), "one": on_threads(1, step)})
        out.append(f"| mixing forward + backward, {n:,} entries, compiled: 2 threads (new) vs 1 "
                   f"(old) | {1e3 * t['two']:.3f} ms | {1e3 * t['one']:.3f} ms | "
                   f"{t['ratio']:.2f}x |")
    return out


def on_threads(threads: int, run: Callable[[], object]) -> Callable[[], object]:
    """``run`` with PyTorch (and so the compiled loops) on ``threads`` threads."""
    def with_threads():
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return run()
        finally:
            torch.set_num_threads(before)
    return with_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/mixing-speed.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = "\n".join([
        "# The mixing's speed: compiled loops and the integer keys' sort against what they "
        "replaced",
        "",
        f"Command: `python benchmarks/mixing_speed.py`. Machine: {machine_line()}, one torch "
        "thread (except the rows on 2 threads). Medians of 7 rounds of 5 calls, the two "
        "variants taking turns; *ratio*: median of the per-round ratios (old / new). *old*: "
        "PyTorch's passes and separate steps (the path without numba), the stable float sort; "
        "*new*: the compiled loops (mcnc.core.mixing_kernels), the integer keys' counting sort. "
        "Both variants "
        "of each row give the same bits (tests/test_mixing.py).",
        "",
        "| what | new | old | old / new |",
        "|---|---|---|---|",
        *rows(), ""])
    Path(args.out).write_text(table)
    print(table)


if __name__ == "__main__":
    main()
