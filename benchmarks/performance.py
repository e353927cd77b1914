"""Reconstruction, training and inference speed of MCNC against its baselines, with peak memory
(results/bench/bench.{json,md}); the same as ``mcnc bench``.

    python benchmarks/performance.py            # ~15 minutes on 2 CPU cores
    python benchmarks/performance.py --quick    # small stand-ins, under a minute
"""

import sys

from mcnc.apps.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
