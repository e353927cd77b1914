"""Two single-threaded training runs at once against one two-threaded run (what
``mcnc compare --jobs 2`` relies on), on an otherwise idle 2-core machine.

For each model: the wall time of one ``mcnc train`` run with 2 threads, and of two runs with
1 thread each started together; the speed-up is the throughput ratio
``2 * t(one, 2 threads) / t(two at once)``. Medians over ``--repeats`` rounds, taking turns.

    python benchmarks/parallel_runs.py --out results/parallel_runs.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mcnc.apps.machine import machine_line

CASES = {"mlp": 60_000, "lenet5": 15_000}
"""Model -> training images of the one epoch each run trains."""


def run(model: str, images: int, threads: int, copies: int) -> float:
    """Seconds until ``copies`` runs of ``model`` with ``threads`` threads each have ended."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "mcnc", "train", "--model", model, "--method", "mcnc",
               "--budget", "1000", "--epochs", "1", "--train-subset", str(images),
               "--no-progress"]
    start = time.perf_counter()
    children = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
                for _ in range(copies)]
    if any(child.wait() for child in children):
        raise RuntimeError(f"a run of {model} failed")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results/parallel_runs.md")
    args = parser.parse_args()
    lines = ["# Two single-threaded runs at once vs one two-threaded run", "",
             "Command: `python benchmarks/parallel_runs.py --out results/parallel_runs.md`  ",
             f"Machine: {machine_line()}", "",
             "One epoch of MCNC at budget 1,000, process start-up and data loading included; "
             f"medians of {args.repeats} rounds.", "",
             "| model | images | one run, 2 threads | two runs, 1 thread each | throughput "
             "ratio |", "|---|---:|---:|---:|---:|"]
    for model, images in CASES.items():
        one, two = [], []
        for _ in range(args.repeats):
            one.append(run(model, images, 2, 1))
            two.append(run(model, images, 1, 2))
        a, b = statistics.median(one), statistics.median(two)
        lines.append(f"| {model} | {images:,} | {a:.1f} s | {b:.1f} s | {2 * a / b:.2f}x |")
        print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
