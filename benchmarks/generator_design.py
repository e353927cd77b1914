"""The measurements behind the generator's defaults (docs/design.md, "Generator design").

For each generator variant: its sphere coverage (sliced Wasserstein distance to the uniform
sphere, k=16, d=1600) and the MNIST test accuracy of a 784-256-10 MLP compressed with it
(scratch mode, k=16, d=1600: 2,176 trainable numbers, 3 epochs, Adam with cosine decay),
averaged over two seeds. Writes results/generator_design.{json,md}.

    python benchmarks/generator_design.py            # ~15 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mcnc import MCNCConfig, compress, models
from mcnc.apps.coverage import coverage, fit_generator
from mcnc.apps.loop import train_classifier
from mcnc.apps.machine import machine_info, machine_line
from mcnc.data.mnist import mnist_tensors

BASE = {"k": 16, "d": 1600, "width": 64, "depth": 2, "hidden_gain": 4.0, "L": 20.0,
        "activation": "sine"}
# (label, generator overrides of BASE, alpha/beta learning rate); the first row is the default.
VARIANTS = [
    ("default: width 64, depth 2, gain 4, L 20", {}, 0.2),
    ("lr 0.05 (the paper's)", {}, 0.05),
    ("lr 0.1", {}, 0.1),
    ("lr 0.4", {}, 0.4),
    ("gain 1 (SIREN init)", {"hidden_gain": 1.0}, 0.2),
    ("gain 1, lr 0.05", {"hidden_gain": 1.0}, 0.05),
    ("gain 2", {"hidden_gain": 2.0}, 0.2),
    ("gain 8", {"hidden_gain": 8.0}, 0.2),
    ("width 32", {"width": 32}, 0.2),
    ("width 128", {"width": 128}, 0.2),
    ("width 256", {"width": 256}, 0.2),
    ("depth 1", {"depth": 1}, 0.2),
    ("depth 3", {"depth": 3}, 0.2),
    ("L 5", {"L": 5.0}, 0.2),
    ("L 60", {"L": 60.0}, 0.2),
    ("ReLU instead of sine", {"activation": "relu"}, 0.2),
    ("fitted to the sphere (SW, 300 steps)", {"fit": True}, 0.2),
    ("gain 1, fitted to the sphere", {"hidden_gain": 1.0, "fit": True}, 0.2),
]


# Confirmation on the demo's CNN (4 epochs, one seed): (label, config overrides)
CNN_VARIANTS = [
    ("scratch, gain 1", {"hidden_gain": 1.0, "d": 2000}),
    ("scratch, gain 4", {"d": 2000}),
    ("lowrank r=16, d=160, gain 1", {"hidden_gain": 1.0, "mode": "lowrank", "rank": 16,
                                     "d": 160}),
    ("lowrank r=16, d=160, gain 4", {"mode": "lowrank", "rank": 16, "d": 160}),
]


def run_cnn(overrides: dict, data, epochs: int = 4) -> tuple[float, int]:
    torch.manual_seed(0)
    model = compress(models.small_cnn(), MCNCConfig(**{**BASE, **overrides}))
    history = train_classifier(model, *data, epochs=epochs, lr=0.2, progress=False)
    return history[-1].test_accuracy, sum(p.numel() for p in model.parameters())


def run_variant(overrides: dict, lr: float, seed: int, epochs: int, data
                ) -> tuple[float, float | None]:
    overrides = dict(overrides)
    fit = overrides.pop("fit", False)
    config = MCNCConfig(**{**BASE, **overrides, "seed": seed})
    phi = fit_generator(config.generator_spec(), steps=300, progress=False) if fit else None
    torch.manual_seed(seed)
    model = compress(models.mlp(), config, generator=phi)
    history = train_classifier(model, *data, epochs=epochs, lr=lr, seed=seed, progress=False)
    return history[-1].test_accuracy, (coverage(model.generator).sw if seed == 0 else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", default="results")
    parser.add_argument("--skip-cnn", action="store_true", help="MLP rows only")
    args = parser.parse_args()
    data = (mnist_tensors("train"), mnist_tensors("test"))
    floor = coverage(MCNCConfig(**BASE).generator_spec()).floor
    rows = []
    for label, overrides, lr in VARIANTS:
        start = time.perf_counter()
        runs = [run_variant(overrides, lr, s, args.epochs, data) for s in range(args.seeds)]
        accs = [100 * acc for acc, _ in runs]
        rows.append({"variant": label, "generator": {**BASE, **overrides}, "lr": lr,
                     "coverage_sw": runs[0][1], "accuracy": accs,
                     "mean": statistics.mean(accs),
                     "seconds": time.perf_counter() - start})
        print(f"{label:<34} SW {runs[0][1]:.3f}  acc {statistics.mean(accs):.2f} "
              f"{[round(a, 2) for a in accs]}", flush=True)
    cnn_rows = []
    for label, overrides in [] if args.skip_cnn else CNN_VARIANTS:
        acc, trainable = run_cnn(overrides, data)
        cnn_rows.append({"variant": label, "overrides": overrides, "trainable": trainable,
                         "accuracy": 100 * acc})
        print(f"small_cnn {label:<30} {trainable:,} trainable  acc {100 * acc:.2f}", flush=True)
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    command = "python benchmarks/generator_design.py"
    (out / "generator_design.json").write_text(json.dumps(
        {"command": command, "machine": machine_info(), "sw_floor": floor, "rows": rows,
         "cnn_rows": cnn_rows},
        indent=2))
    lines = [
        "# Generator design: sphere coverage and MNIST accuracy", "",
        f"Command: `{command}`  ", f"Machine: {machine_line()}", "",
        "MLP 784-256-10 on MNIST, scratch mode, k=16, d=1600 (2,176 trainable numbers), "
        f"{args.epochs} epochs, batch 128, Adam with cosine decay; accuracy is the mean over "
        f"{args.seeds} seeds. SW: sliced Wasserstein distance between phi(U([-L,L]^16)) and "
        f"U(S^1599) in units of 1/sqrt(d) (4,096 samples; two uniform samples give "
        f"{floor:.3f}).", "",
        "| variant | SW | test accuracy (%) | per seed |", "|---|---:|---:|---|",
    ]
    lines += [f"| {r['variant']} | {r['coverage_sw']:.3f} | {r['mean']:.2f} | "
              f"{', '.join(f'{a:.2f}' for a in r['accuracy'])} |" for r in rows]
    if cnn_rows:
        lines += ["", "The demo's CNN (`small_cnn`, 824,650 weights), 4 epochs, lr 0.2, seed 0:",
                  "",
                  "| variant | trainable | test accuracy (%) |", "|---|---:|---:|"]
        lines += [f"| {r['variant']} | {r['trainable']:,} | {r['accuracy']:.2f} |"
                  for r in cnn_rows]
    (out / "generator_design.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'generator_design.md'}")


if __name__ == "__main__":
    main()
