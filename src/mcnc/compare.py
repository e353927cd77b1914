"""``mcnc compare``: a grid of ``mcnc train`` runs (methods x budgets x seeds, or an ablation
axis), then a markdown table of mean and std and a plot of accuracy against stored numbers.

Results are appended to ``<out>/runs.jsonl`` as each run ends; running the same preset again
skips the runs already there, so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mcnc.classifier_run import TrainSettings, train
from mcnc.machine import machine_line
from mcnc.methods import MethodSettings


@dataclass(frozen=True)
class Preset:
    """A named grid: every setting in ``runs`` is trained once per seed."""

    name: str
    description: str
    runs: tuple[TrainSettings, ...]
    seeds: tuple[int, ...] = (0, 1)
    label: str = "method"
    """Which field tells the rows apart in the table (``method`` or an ablation axis)."""


def _grid(datasets, models, methods, budgets, **common) -> list[TrainSettings]:
    runs = []
    for dataset in datasets:
        for model, model_options in models:
            options = {**common, **model_options}
            for method in methods:
                for budget in ([None] if method == "dense" else budgets):
                    runs.append(TrainSettings(model=model, dataset=dataset, method=method,
                                              budget=budget, **options))
    return runs


QUICK_METHODS = ("dense", "mcnc", "mcnc-lowrank", "pranc", "nola", "pruning")


def _paper_runs() -> list[TrainSettings]:
    runs = []
    for dataset in ("cifar10", "cifar100"):
        for model, d in (("resnet20", 1600), ("resnet56", 3200)):
            common = dict(model=model, dataset=dataset, epochs=400, augment=True)
            mcnc = MethodSettings(k=16, d=d, L=20.0)
            runs += [TrainSettings(method=m, lr=0.05, method_settings=mcnc, **common)
                     for m in ("mcnc", "mcnc-lowrank")]
            runs += [TrainSettings(method="nola", budget=b, lr=1e-3, **common)
                     for b in (5_000, 10_000)]
            runs += [TrainSettings(method="pranc", budget=b, **common) for b in (5_000, 10_000)]
    common = dict(model="resnet18", dataset="imagenet100", epochs=100, augment=True,
                  batch_size=256, workers=8)
    runs += [TrainSettings(method="mcnc-lowrank", lr=0.05,
                           method_settings=MethodSettings(k=16, d=1600, L=20.0, m=m), **common)
             for m in (1, 2, 4)]
    runs += [TrainSettings(method=method, budget=b, lr=1e-3 if method == "nola" else None,
                           **common) for method in ("nola", "pranc") for b in (100_000, 200_000)]
    return runs


def _ablation(axis: str, values, base: TrainSettings) -> list[TrainSettings]:
    return [replace(base, method_settings=replace(base.method_settings, **{axis: v}))
            for v in values]


_ABLATION_BASE = TrainSettings(model="mlp", dataset="mnist", method="mcnc", budget=1000,
                               epochs=2, train_subset=20_000, progress=False)
"""The quick preset's MNIST MLP at budget 1000, where MCNC trails NOLA and PRANC."""

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("quick", "MNIST and Fashion-MNIST; MLP and LeNet-5 (20k training images, 2 "
           "epochs), ResNet-20 (3k images, 2 epochs, 2k test images); budgets of 300, 1000 "
           "and 3000 trained numbers; 2 seeds",
           tuple(_grid(("mnist", "fashion-mnist"),
                       (("mlp", {"epochs": 2, "train_subset": 20_000}),
                        ("lenet5", {"epochs": 2, "train_subset": 20_000}),
                        ("resnet20", {"epochs": 2, "train_subset": 3_000,
                                      "test_subset": 2_000})),
                       QUICK_METHODS, (300, 1_000, 3_000), progress=False))),
    Preset("lr", "learning rate of each method's own numbers: MLP on MNIST (20k training "
           "images, 2 epochs as in quick), budget 1000, 1 seed",
           tuple(replace(s, lr=lr) for s in _grid(("mnist",), (("mlp", {"epochs": 2,
                                                                      "train_subset": 20_000}),),
                                                   QUICK_METHODS[1:], (1_000,), progress=False)
                 for lr in (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)),
           seeds=(0,), label="lr"),
    Preset("paper", "the paper's settings: Table 1 (ResNet-20/56 on CIFAR-10/100, 400 "
           "epochs with augmentation, Adam; MCNC k=16, L=20, d=1600 (R20) or 3200 (R56), "
           "lr 0.05; NOLA rank 64, lr 1e-3; PRANC at 5,000 and 10,000 coefficients) and "
           "Table 2 (ResNet-18 on ImageNet-100, MCNC w/ LoRA with m = 1, 2, 4; NOLA and PRANC "
           "at 100k and 200k; 100 epochs, our choice: the paper does not say). Cosine decay "
           "replaces the paper's reduce-on-plateau. For a GPU; --data-root must hold the "
           "data set the run names", tuple(_paper_runs())),
    Preset("ablation-kd", "k and d at a fixed compression ratio (the paper's Table 6): the "
           "budget is fixed, so d grows with k (d ~ 203.5 (k + 1)); MNIST MLP as in quick, "
           "budget 1000",
           tuple(_ablation("k", (2, 4, 8, 16, 32, 64), _ABLATION_BASE)), label="k"),
    Preset("ablation-L", "L, the side of the cube (Table 7): MNIST MLP as in quick, budget "
           "1000", tuple(_ablation("L", (1.0, 5.0, 20.0, 60.0, 200.0), _ABLATION_BASE)),
           label="L"),
    Preset("ablation-m", "m = 1 vs m > 1 at the same budget (Table 5): MNIST MLP as in quick, "
           "budget 1000", tuple(_ablation("m", (1, 2, 4), _ABLATION_BASE)), label="m"),
    Preset("ablation-activation", "sine vs ReLU generator: MNIST MLP as in quick, budget 1000",
           tuple(_ablation("activation", ("sine", "relu"), _ABLATION_BASE)),
           label="activation"),
]}


def _key(settings: dict) -> str:
    """What identifies a run: its settings without where it writes and how it shows progress.
    Records written before the budget and seed left ``method_settings`` keep their keys."""
    settings = {**settings, "out": None, "progress": False, "resume": False}
    settings["method_settings"] = {k: v for k, v in settings["method_settings"].items()
                                   if k not in ("budget", "seed")}
    return json.dumps(settings, sort_keys=True)


@dataclass
class Comparison:
    preset: Preset
    out: Path
    data_root: str | None = None
    results: list[dict] = field(default_factory=list)

    def run(self, progress: bool = True) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        log = self.out / "runs.jsonl"
        done = {}
        if log.exists():
            for line in log.read_text().splitlines():
                record = json.loads(line)
                done[_key(record["settings"])] = record
        todo = [(replace(s, seed=seed, data_root=self.data_root), seed)
                for s in self.preset.runs for seed in self.preset.seeds]
        start = time.perf_counter()
        for i, (s, _) in enumerate(todo, 1):
            key = _key(asdict(s))
            if key not in done:
                t0 = time.perf_counter()
                result = train(s)
                done[key] = {"key": key, "settings": asdict(s), **result}
                with open(log, "a") as f:
                    f.write(json.dumps(done[key]) + "\n")
                if progress:
                    print(f"[{i}/{len(todo)}] {s.dataset} {s.model} {s.method} "
                          f"budget={s.budget} seed={s.seed}: "
                          f"{100 * result['test_accuracy']:.2f}% "
                          f"({time.perf_counter() - t0:.0f} s, total "
                          f"{time.perf_counter() - start:.0f} s)", flush=True)
            self.results.append(done[key])

    def rows(self) -> list[dict]:
        """One row per setting: mean and std over seeds."""
        groups: dict[tuple, list[dict]] = {}
        for r in self.results:
            s = r["settings"]
            label = _label(s, self.preset.label)
            groups.setdefault((s["dataset"], s["model"], label, s["budget"]), []).append(r)
        rows = []
        for (dataset, model, label, budget), rs in groups.items():
            acc = [100 * r["test_accuracy"] for r in rs]
            rows.append({"dataset": dataset, "model": model, "label": label, "budget": budget,
                         "stored": rs[0]["stored_numbers"], "bytes": rs[0]["file_bytes"],
                         "mean": statistics.fmean(acc),
                         "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                         "seeds": len(acc),
                         "seconds": statistics.fmean(r["train_seconds"] for r in rs)})
        return rows


def _label(settings: dict, axis: str) -> str:
    if axis == "method":
        return settings["method"]
    if axis == "lr":
        return f"{settings['method']} lr={settings['lr']:g}"
    return f"{axis}={settings['method_settings'][axis]}"


def markdown_table(rows: list[dict], preset: Preset, command: str, seconds: float) -> str:
    lines = [f"# mcnc compare --preset {preset.name}", "", preset.description, "",
             f"Command: `{command}`  ", f"Machine: {machine_line()}  ",
             f"Training time summed over all runs: {seconds / 60:.1f} min", "",
             "Accuracy is top-1 on the test set, mean ± std over seeds. *stored* counts every "
             "number in the file: the method's trained numbers (the budget) plus the dense "
             "leftovers (normalisation layers); pruning files also hold a 4-byte index per "
             "kept weight, included in *bytes*.", ""]
    for (dataset, model) in dict.fromkeys((r["dataset"], r["model"]) for r in rows):
        lines += [f"## {dataset}, {model}", "",
                  "| method | budget | stored | bytes | accuracy % | seeds | s/run |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            if (r["dataset"], r["model"]) != (dataset, model):
                continue
            budget = "-" if r["budget"] is None else f"{r['budget']:,}"
            lines.append(f"| {r['label']} | {budget} | {r['stored']:,} | {r['bytes']:,} | "
                         f"{r['mean']:.2f} ± {r['std']:.2f} | {r['seeds']} | "
                         f"{r['seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy against stored numbers (log x), one panel per data set and model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r["dataset"], r["model"]) for r in rows))
    cols = min(3, len(panels))
    fig, axes = plt.subplots(math.ceil(len(panels) / cols), cols, squeeze=False,
                             figsize=(5 * cols, 3.8 * math.ceil(len(panels) / cols)))
    for ax, (dataset, model) in zip(axes.flat, panels, strict=False):
        mine = [r for r in rows if (r["dataset"], r["model"]) == (dataset, model)]
        for label in dict.fromkeys(r["label"] for r in mine):
            pts = sorted((r["stored"], r["mean"], r["std"]) for r in mine if r["label"] == label)
            xs, ys, es = zip(*pts, strict=True)
            if len(xs) == 1 and label == "dense":
                ax.axhline(ys[0], color="k", ls="--", lw=1, label=f"dense ({xs[0]:,})")
            else:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("stored numbers")
        ax.set_ylabel("test accuracy %")
        ax.set_title(f"{dataset}, {model}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(preset: str, out: str | Path, data_root: str | None = None,
            progress: bool = True, command: str = "") -> Path:
    """Run a preset (resuming from ``out/runs.jsonl``) and write ``table.md`` and ``plot.png``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    comparison = Comparison(PRESETS[preset], Path(out), data_root)
    comparison.run(progress)
    rows = comparison.rows()
    seconds = sum(r["train_seconds"] for r in comparison.results)
    out = Path(out)
    (out / "table.md").write_text(markdown_table(rows, comparison.preset,
                                                 command or f"mcnc compare --preset {preset}",
                                                 seconds))
    plot(rows, out / "plot.png")
    return out / "table.md"


__all__ = ["PRESETS", "MethodSettings", "Preset", "compare"]
