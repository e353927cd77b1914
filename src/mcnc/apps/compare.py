"""``mcnc compare``: a grid of ``mcnc train`` runs (methods x budgets x seeds, or an ablation
axis), then a markdown table of mean and std and a plot of accuracy against stored numbers.

Results are appended to ``<out>/runs.jsonl`` as each run ends; running the same preset again
skips the runs already there, so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from collections import Counter
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from mcnc.apps.classifier_run import TrainSettings, train
from mcnc.apps.comparison_report import (
    REMOVED_METHOD_DEFAULTS,
    failed,
    fell_to_chance,
    late_change,
    markdown_table,
    method_rate,
    plot,
    plot_curves,
    row_label,
)
from mcnc.apps.methods import SETTINGS_READ_BY, MethodSettings
from mcnc.apps.presets import MANIFOLD_METHODS, PRESETS, Preset
from mcnc.apps.worker_pool import process_pool
from mcnc.data.registry import DATASETS

RECORDED_DEFAULTS = {"hidden_gain": 4.0, "mixing": "none"}
"""Method settings whose default has changed, with the value a record that predates the field
ran at (hidden gain 4 until the held-in table made 8 the default; no mixing until
held-in-2)."""


def _key(settings: dict) -> str:
    """What identifies a run: its settings without where it writes and how it shows progress,
    and of the method settings only those its method reads (``SETTINGS_READ_BY``). Settings
    added since a record was written take the value the record ran at (``RECORDED_DEFAULTS``,
    else today's default; records written before the budget and seed left ``method_settings``
    keep their keys). beta's rate identifies only a method that has one; a record without it
    ran at the absolute rate (before version 0.3)."""
    settings = {**settings, "beta_rate": settings.get("beta_rate", "absolute")
                if settings["method"] in MANIFOLD_METHODS else "relative"}
    method = {k: v for k, v in settings["method_settings"].items() if k not in ("budget", "seed")}
    removed = {k: method.pop(k) for k in list(method) if k in REMOVED_METHOD_DEFAULTS}
    if any(v != REMOVED_METHOD_DEFAULTS[k] for k, v in removed.items()):
        return json.dumps(settings, sort_keys=True)  # a removed option: no preset run matches
    full = TrainSettings(**{**settings, "method_settings": MethodSettings(
        **{**RECORDED_DEFAULTS, **method})})
    values = asdict(replace(full, out=None, progress=False, resume=False))
    read = SETTINGS_READ_BY.get(full.method, tuple(values["method_settings"]))
    values["method_settings"] = {k: values["method_settings"][k] for k in read}
    return json.dumps(values, sort_keys=True)


@dataclass
class Comparison:
    preset: Preset
    out: Path
    data_root: str | None = None
    results: list[dict] = field(default_factory=list)

    def run(self, progress: bool = True, jobs: int = 1, train: bool = True,
            where: dict[str, str] | None = None) -> None:
        """Train every run of the preset not yet in ``runs.jsonl``, appending each result as
        it finishes; ``jobs`` runs at a time, each in its own process with
        ``cores // jobs`` torch threads (``jobs=1``: in this process). With ``train=False``
        only the finished runs are collected (a partial table). ``where`` (field -> value as
        text, e.g. ``{"model": "lenet5"}``) trains only the runs that match."""
        self.out.mkdir(parents=True, exist_ok=True)
        log = self.out / "runs.jsonl"
        done = {}
        if log.exists():
            for line in log.read_text().splitlines():
                record = json.loads(line)
                done[_key(record["settings"])] = record
        runs = [replace(s, seed=seed, data_root=self.data_root)
                for s in self.preset.runs for seed in self.preset.seeds]
        todo = [s for s in runs if _key(asdict(s)) not in done and _matches(s, where or {})
                ] if train else []
        start = time.perf_counter()
        for i, (s, result) in enumerate(_train_all(todo, jobs), 1):
            key = _key(asdict(s))
            done[key] = {"key": key, "settings": asdict(s), **result}
            with open(log, "a") as f:
                f.write(json.dumps(done[key]) + "\n")
            if progress:
                print(f"[{i}/{len(todo)} new, {len(runs)} in all] {s.dataset} {s.model} "
                      f"{s.method} budget={s.budget} lr={s.lr} seed={s.seed}: "
                      f"{100 * result['test_accuracy']:.2f}% ({result['train_seconds']:.0f} s; "
                      f"{time.perf_counter() - start:.0f} s so far)", flush=True)
        self.results = [done[key] for key in map(_key, map(asdict, runs)) if key in done]

    def rows(self) -> list[dict]:
        """One row per setting: mean and std over seeds."""
        groups: dict[tuple, list[dict]] = {}
        for r in self.results:
            s = r["settings"]
            label = row_label(s, self.preset.label, asdict(self.preset.reference))
            groups.setdefault((s["dataset"], s["model"], label, s["budget"]), []).append(r)
        rows = []
        for (dataset, model, label, budget), rs in groups.items():
            acc = [100 * r["test_accuracy"] for r in rs]
            rows.append({"dataset": dataset, "model": model, "label": label, "budget": budget,
                         "stored": rs[0]["stored_numbers"], "bytes": rs[0]["file_bytes"],
                         "mean": statistics.fmean(acc),
                         "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                         "seeds": len(acc),
                         "lr": method_rate(rs[0]["settings"]),
                         "failed": sum(failed(r.get("history") or [], _classes(dataset))
                                       for r in rs),
                         "fell": sum(fell_to_chance(r.get("history") or [], _classes(dataset))
                                     for r in rs),
                         "train_loss": statistics.fmean(r["train_loss"] for r in rs),
                         "late": _mean_or_none([late_change(r.get("history") or [])
                                                for r in rs]),
                         "seconds": statistics.fmean(r["train_seconds"] for r in rs)})
        return rows


def _matches(settings: TrainSettings, where: dict[str, str]) -> bool:
    values = asdict(settings)
    unknown = set(where) - set(values)
    if unknown:
        raise ValueError(f"--where names unknown settings {sorted(unknown)}; use fields of "
                         f"TrainSettings such as model, method, budget, dataset, seed")
    return all(str(values[k]) == v for k, v in where.items())


def _classes(dataset: str) -> int | None:
    """Classes of a known data set (an image folder's registry entry says 0: unknown)."""
    return DATASETS[dataset].num_classes if dataset in DATASETS else None


def _mean_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


GPU_SHARING_WARNING = (
    "--jobs {jobs} puts {jobs} training processes on one GPU, which runs them in turn, not side "
    "by side: on an H200, four ResNet-20 runs at once finished none in 420 s, where one alone "
    "took 110 s (the steps of these small models are bound by kernel launches). Use --jobs 1 "
    "on a single GPU.")


def _train_in_worker(settings: TrainSettings, threads: int) -> dict:
    torch.set_num_threads(threads)
    return train(settings)


def _train_all(todo: list[TrainSettings], jobs: int):
    """``(settings, result)`` of every run in ``todo``, in the order they finish. A run that
    fails does not stop the others: the failures are reported together at the end."""
    failed = []
    if jobs <= 1 or len(todo) <= 1:
        for s in todo:
            yield s, train(s)
        return
    threads = max(1, torch.get_num_threads() // jobs)
    if torch.cuda.device_count() == 1:
        warnings.warn(GPU_SHARING_WARNING.format(jobs=jobs), stacklevel=2)
    with process_pool(jobs) as pool:
        futures = {pool.submit(_train_in_worker, s, threads): s for s in todo}
        for future in as_completed(futures):
            s = futures[future]
            try:
                result = future.result()
            except Exception as e:  # reported below, after the other runs
                failed.append(f"{s.model} {s.method} budget={s.budget} seed={s.seed}: {e}")
                continue
            yield s, result
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed (the others are in runs.jsonl): "
                           + "; ".join(failed[:5]))


def compare(preset: str, out: str | Path, data_root: str | None = None,
            progress: bool = True, command: str = "", jobs: int = 1, train: bool = True,
            where: dict[str, str] | None = None) -> Path:
    """Run a preset (resuming from ``out/runs.jsonl``, ``jobs`` runs at a time) and write
    ``table.md``, ``plot.png`` and ``curves.png``; with ``train=False`` write them from the
    runs finished so far."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    comparison = Comparison(PRESETS[preset], Path(out), data_root)
    comparison.run(progress, jobs, train, where)
    rows = comparison.rows()
    seconds = sum(r["train_seconds"] for r in comparison.results)
    out = Path(out)
    expected = len(comparison.preset.runs) * len(comparison.preset.seeds)
    (out / "table.md").write_text(markdown_table(
        rows, comparison.preset, command or f"mcnc compare --preset {preset}", seconds,
        finished=(len(comparison.results), expected),
        machines=Counter(r.get("machine", "not recorded") for r in comparison.results)))
    plot(rows, out / "plot.png")
    plot_curves(comparison.results, out / "curves.png", comparison.preset.label,
                asdict(comparison.preset.reference))
    return out / "table.md"


__all__ = ["PRESETS", "Preset", "compare"]
