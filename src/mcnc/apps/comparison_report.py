"""What ``mcnc compare`` writes: the markdown table, accuracy against stored numbers, and the
learning curves of every cell.

In the table each compressed method's row is compared with the best linear random subspace
(PRANC or NOLA) of the same cell: the difference of the means and its standard error
``sqrt(s1**2 / n1 + s2**2 / n2)`` (Welch). A difference is called a win or a loss only when it
is larger than twice that standard error; otherwise the row says "tie".
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

from mcnc.apps.machine import machine_line
from mcnc.apps.methods import MethodSettings

SUBSPACES = ("pranc", "nola")
"""The linear random subspaces MCNC is measured against."""


VARIANT_FIELDS = {"beta_lr_scale": 1.0, "warmup": 0.0}
"""Training settings a ``variant`` row may change, with their defaults."""
VARIANT_METHOD_FIELDS = ("offset", "layer_scale", "alpha_init_scale", "width", "depth",
                         "hidden_gain", "L", "k", "m", "rank", "allocation_power",
                         "mixing", "activation")
"""MCNC settings a ``variant`` row may change; the preset's ``reference`` gives the values of
its ``reference`` row (the defaults when the preset was measured)."""
REMOVED_METHOD_DEFAULTS = {"offset": "none", "layer_scale": False, "allocation_power": 1.0}
"""Options mcnc no longer has, with their defaults: committed held-in records still name
them."""


def row_label(settings: dict, axis: str, reference: dict | None = None) -> str:
    """What tells a row apart from the others of its cell: the method, the value of the
    preset's ablation axis, or (``variant``) every candidate setting that differs from
    ``reference`` (method settings as a dict; the defaults of ``MethodSettings`` if None)."""
    if axis == "method":
        return settings["method"]
    if axis == "variant":
        method = settings["method_settings"]
        changed = [f"{k}={settings.get(k, v)}" for k, v in VARIANT_FIELDS.items()
                   if settings.get(k, v) != v]
        reference = REMOVED_METHOD_DEFAULTS | (reference or asdict(MethodSettings()))
        changed += [f"{k}={method.get(k, reference[k])}" for k in VARIANT_METHOD_FIELDS
                    if method.get(k, reference[k]) != reference[k]]
        return f"{settings['method']} " + (", ".join(changed) or "reference")
    if axis == "lr":
        return f"{settings['method']} lr={method_rate(settings):g}"
    return f"{axis}={settings['method_settings'][axis]}"


def method_rate(settings: dict) -> float | None:
    """The learning rate a run's method trains at (the dense model's is ``dense_lr``)."""
    return settings["dense_lr"] if settings["method"] == "dense" else settings["lr"]


def late_change(history: list[dict]) -> float | None:
    """Test accuracy (points) gained over the last fifth of the epochs: how far from flat a
    run still was (None without a history of at least 2 epochs)."""
    if len(history) < 2:
        return None
    start = history[-1 - max(1, math.ceil(len(history) / 5))]
    return 100 * (history[-1]["test_accuracy"] - start["test_accuracy"])


def is_subspace(row: dict) -> bool:
    return row["label"] in SUBSPACES


def is_reference(row: dict) -> bool:
    return row["label"].endswith(" reference")


CHANCE_LOSS_FRACTION = 0.98
"""A run whose final training loss is at least this fraction of ``ln(classes)`` (the loss of
a uniform guess) ends at chance."""


def failed(history: list[dict], classes: int | None = None) -> bool:
    """Whether a run diverged: it ended below half of its own best test accuracy (it learned,
    then fell apart), or, with the number of classes known, at the training loss of a
    uniform guess."""
    if not history:
        return False
    accuracies = [epoch["test_accuracy"] for epoch in history]
    at_chance = (classes is not None and classes > 1 and history[-1]["train_loss"]
                 >= CHANCE_LOSS_FRACTION * math.log(classes))
    return accuracies[-1] < 0.5 * max(accuracies) or at_chance


def fell_to_chance(history: list[dict], classes: int | None) -> bool:
    """Whether a run's test accuracy was ever below twice a uniform guess's (``2 / classes``),
    at any epoch: it blew up, even if it recovered later (False with the classes unknown)."""
    if not classes or classes < 3:
        return False
    return any(epoch["test_accuracy"] < 2 / classes for epoch in history)


def stable_best(sweep: list[dict]) -> dict | None:
    """The rate a learning-rate sweep picks: the most accurate of the rows (``lr``, ``mean``,
    ``fell``: runs that fell to chance) whose rate is below the smallest rate that fell to
    chance at any epoch. A rate at the edge of stability can recover on one seed and diverge
    on the next, so the sweep never picks it or anything above it (None if nothing is left)."""
    edge = min((r["lr"] for r in sweep if r["fell"]), default=math.inf)
    stable = [r for r in sweep if r["lr"] < edge]
    return max(stable, key=lambda r: r["mean"]) if stable else None


def picked_rates(rows: list[dict]) -> list[str]:
    """One line per data set, model and method of a learning-rate sweep: the rate
    ``stable_best`` picks and whether it lies strictly inside the rates tried."""
    sweeps: dict[tuple, list[dict]] = {}
    for r in rows:
        sweeps.setdefault((r["dataset"], r["model"], r["label"].split(" lr=")[0]), []).append(r)
    lines = []
    for (dataset, model, method), sweep in sweeps.items():
        best = stable_best(sweep)
        if best is None:
            lines.append(f"- {dataset}, {model}, {method}: every rate tried fell to chance")
            continue
        rates = sorted(r["lr"] for r in sweep)
        inside = rates[0] < best["lr"] < rates[-1]
        fell = sorted(r["lr"] for r in sweep if r["fell"])
        lines.append(f"- {dataset}, {model}, {method}: **{best['lr']:g}** ({best['mean']:.2f} %"
                     f"{'' if inside else '; at the edge of the rates tried'}"
                     + (f"; fell to chance at {', '.join(f'{x:g}' for x in fell)}" if fell
                        else "") + ")")
    return lines


def versus_subspace(row: dict, rows: list[dict]) -> str:
    """``row`` (a compressed method) against the best PRANC or NOLA row of its cell."""
    return versus(row, [r for r in rows if is_subspace(r)])


def best_rival(row: dict, candidates: list[dict]) -> dict | None:
    """The best of ``candidates`` (by mean) in ``row``'s cell (data set, model, budget), other
    than ``row`` itself; None when there is none or ``row`` has no budget."""
    rivals = [r for r in candidates if r["label"] != row["label"]
              and (r["dataset"], r["model"], r["budget"]) == (row["dataset"], row["model"],
                                                             row["budget"])]
    if not rivals or row["budget"] is None:
        return None
    return max(rivals, key=lambda r: r["mean"])


def versus(row: dict, candidates: list[dict]) -> str:
    """``row`` against the best of ``candidates`` in its cell: the difference of the means
    ± its Welch standard error, and the verdict."""
    best = best_rival(row, candidates)
    if best is None:
        return ""
    diff, se, verdict = welch(_sample(row), _sample(best))
    if se is None:
        return f"{diff:+.2f} vs {best['label']} (1 seed: no test)"
    return f"{diff:+.2f} ± {se:.2f} vs {best['label']}: **{verdict}**"


def _sample(row: dict) -> tuple[float, float, int]:
    return row["mean"], row["std"], row["seeds"]


def scoreboard(rows: list[dict], is_rival) -> list[str]:
    """One line per label that has rivals: its wins, ties and losses against the best rival
    of each cell (rows with one seed are left out and counted)."""
    lines, rivals = [], [r for r in rows if is_rival(r)]
    for label in dict.fromkeys(r["label"] for r in rows if not is_rival(r)):
        tally = {"win": 0, "tie": 0, "loss": 0, None: 0}
        for row in (r for r in rows if r["label"] == label):
            best = best_rival(row, rivals)
            if best is not None:
                tally[welch(_sample(row), _sample(best))[2]] += 1
        if sum(tally.values()):
            untested = f", {tally[None]} with one seed (untested)" if tally[None] else ""
            lines.append(f"- {label}: {tally['win']} wins, {tally['tie']} ties, "
                         f"{tally['loss']} losses{untested}")
    return lines


def welch(a: tuple[float, float, int], b: tuple[float, float, int]
          ) -> tuple[float, float | None, str | None]:
    """``a`` against ``b``, each (mean, std, n): the difference of the means, its Welch
    standard error and the verdict: ``"win"`` when ``a`` is higher by more than twice the
    standard error, ``"loss"`` when lower by that much, else ``"tie"`` (no standard error and
    no verdict when either has a single sample)."""
    diff = a[0] - b[0]
    if a[2] < 2 or b[2] < 2:
        return diff, None, None
    se = math.sqrt(a[1] ** 2 / a[2] + b[1] ** 2 / b[2])
    return diff, se, "win" if diff > 2 * se else "loss" if diff < -2 * se else "tie"


COMPARED = {"method": ("vs subspace", "the best of PRANC and NOLA", is_subspace),
            "variant": ("vs reference", "the method at the preset's reference settings (the "
                        "defaults when it was measured)", is_reference)}
"""Preset label -> (column, what it compares with, which rows are the rivals): the comparison
column of a table and its scoreboard."""


FLAT_POINTS = 0.3
"""A run has flattened when its last fifth of epochs moved test accuracy by less than this."""


def glance(rows: list[dict]) -> list[str]:
    """Accuracy at a glance: one line per data set, model and budget, one column per method
    (mean ± std, n), ‡ where runs failed, and in bold the best of two or more methods whose
    runs all trained (a cell where every method failed has no bold); the last column is the
    dense model of the same data set and model. Empty without budgets."""
    methods = list(dict.fromkeys(r["label"] for r in rows if r["budget"] is not None))
    if not methods:
        return []
    dense = {(r["dataset"], r["model"]): r for r in rows if r["budget"] is None}
    cells: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r["budget"] is not None:
            cells.setdefault((r["dataset"], r["model"], r["budget"]), {})[r["label"]] = r
    lines = ["| data set, model | budget | " + " | ".join(methods) + " | dense |",
             "|---|---:|" + "---:|" * (len(methods) + 1)]
    for (dataset, model, budget), here in cells.items():
        trained = [r for r in here.values() if not r.get("failed")]
        best = max(trained, key=lambda r: r["mean"])["label"] if len(here) > 1 and trained else None
        entries = [_glance_entry(here.get(m), m == best) for m in methods]
        entries.append(_glance_entry(dense.get((dataset, model)), False))
        lines.append(f"| {dataset}, {model} | {budget:,} | " + " | ".join(entries) + " |")
    return lines


def _glance_entry(row: dict | None, best: bool) -> str:
    if row is None:
        return ""
    text = f"{row['mean']:.2f} ± {row['std']:.2f} ({row['seeds']}{' ‡' * bool(row.get('failed'))})"
    return f"**{text}**" if best else text


def flatness_line(rows: list[dict]) -> str:
    """How many rows have flattened (``|late| < FLAT_POINTS``), naming the others' mark."""
    known = [r for r in rows if r["late"] is not None]
    steep = [r for r in known if abs(r["late"]) >= FLAT_POINTS]
    if not known:
        return ""
    return (f"Flat by the {FLAT_POINTS}-point rule: {len(known) - len(steep)} of {len(known)} "
            f"rows; the {len(steep)} others still moved over their last fifth (*late* marked "
            "†): they might gain from longer training.  " if steep else
            f"Flat by the {FLAT_POINTS}-point rule: all {len(known)} rows.  ")


def machines_line(machines: dict[str, int]) -> str:
    """Where the runs ran: ``machines`` maps a machine description to its number of runs."""
    if not machines:
        return f"Machine: {machine_line()} (no runs yet)  "
    if len(machines) == 1:
        return f"Machine: {next(iter(machines))}  "
    runs = [f"{m} ({n} run{'s' * (n != 1)})" for m, n in machines.items()]
    return "Machines: " + "; ".join(runs) + "  "


def markdown_table(rows: list[dict], preset, command: str, seconds: float,
                   finished: tuple[int, int] | None = None,
                   machines: dict[str, int] | None = None) -> str:
    """The table of a finished (or partly finished) preset, one section per data set and
    model; ``finished``: (runs done, runs in the preset); ``machines``: machine description
    -> runs it trained."""
    done = "" if finished is None or finished[0] == finished[1] else (
        f"**Partial: {finished[0]} of {finished[1]} runs finished** (the command resumes "
        "the rest).  ")
    lines = [f"# mcnc compare --preset {preset.name}", "", preset.description, "",
             f"Command: `{command}`  ", machines_line(machines or {}),
             f"Training time summed over all runs: {seconds / 60:.1f} min  ", done,
             flatness_line(rows), "",
             "Accuracy is top-1 on the test set, mean ± std over n seeds. *stored* counts every "
             "number in the file: the method's trained numbers (the budget) plus the dense "
             "leftovers (normalisation layers); pruning files also hold a 4-byte index per "
             "kept weight, included in *bytes*. *late* is the test accuracy gained over the "
             "last fifth of the epochs (mean over seeds): near 0 when training has flattened. "
             "‡: runs that diverged, ending at chance (the training loss of a uniform guess) "
             "or below half their own best test accuracy; they stay in the mean. "
             f"*{COMPARED[preset.label][0]}*: the difference to {COMPARED[preset.label][1]} in "
             "the same cell ± its standard error (Welch); a win or loss only beyond twice the "
             "standard error." if preset.label in COMPARED else "", ""]
    column, rivals_named, is_rival = COMPARED.get(preset.label, ("", "", None))
    board = scoreboard(rows, is_rival) if is_rival else []
    if board:
        lines += [f"Against {rivals_named}, one verdict per cell (Welch, 2 standard errors):",
                  "", *board, ""]
    if preset.label == "lr":
        lines += ["Picked rates: the most accurate rate below the smallest one whose run fell to "
                  "chance (test accuracy under twice a uniform guess's) at any epoch, even if it "
                  "recovered (↯ in the table).", "", *picked_rates(rows), ""]
    grid = glance(rows) if preset.label == "method" else []
    if grid:
        lines += ["At a glance: accuracy % (n seeds), in bold the best compressed method of each "
                  "line among those with no failed run (‡); the sections below give every column "
                  "and the verdicts.", "", *grid, ""]
    for (dataset, model) in dict.fromkeys((r["dataset"], r["model"]) for r in rows):
        lines += [f"## {dataset}, {model}", "",
                  "| method | budget | stored | bytes | accuracy % | n | late | train loss | "
                  f"{column} | s/run |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
        for r in rows:
            if (r["dataset"], r["model"]) != (dataset, model):
                continue
            budget = "-" if r["budget"] is None else f"{r['budget']:,}"
            late = "" if r["late"] is None else f"{r['late']:+.2f}" + (
                " †" if abs(r["late"]) >= FLAT_POINTS else "")
            size = "-" if r["bytes"] is None else f"{r['bytes']:,}"
            seeds = f"{r['seeds']}" + (f" ({r['failed']} failed ‡)" if r.get("failed") else "") + (
                " ↯" if r.get("fell") and preset.label == "lr" else "")
            lines.append(f"| {r['label']} | {budget} | {r['stored']:,} | {size} | "
                         f"{r['mean']:.2f} ± {r['std']:.2f} | {seeds} | {late} | "
                         f"{r['train_loss']:.4f} | {_compared(r, rows, is_rival)} | "
                         f"{r['seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def _compared(row: dict, rows: list[dict], is_rival) -> str:
    return versus(row, [r for r in rows if is_rival(r)]) if is_rival else ""


def label_colors(labels) -> dict[str, str]:
    """One colour per label, the same in every panel and plot of a preset (labels sorted,
    then matplotlib's default cycle)."""
    cycle = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
             "#7f7f7f", "#bcbd22", "#17becf"]
    return {label: cycle[i % len(cycle)] for i, label in enumerate(sorted(set(labels)))}


CURVE_COLUMNS = 4
"""Cells per row of the learning-curve figure."""


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy against stored numbers (log x), one panel per data set and model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r["dataset"], r["model"]) for r in rows))
    if not panels:
        return
    cols = min(3, len(panels))
    fig, axes = plt.subplots(math.ceil(len(panels) / cols), cols, squeeze=False,
                             figsize=(5 * cols, 3.8 * math.ceil(len(panels) / cols)))
    colors = label_colors(r["label"] for r in rows)
    for ax, (dataset, model) in zip(axes.flat, panels, strict=False):
        mine = [r for r in rows if (r["dataset"], r["model"]) == (dataset, model)]
        for label in dict.fromkeys(r["label"] for r in mine):
            pts = sorted((r["stored"], r["mean"], r["std"]) for r in mine if r["label"] == label)
            xs, ys, es = zip(*pts, strict=True)
            if len(xs) == 1 and label == "dense":
                ax.axhline(ys[0], color="k", ls="--", lw=1, label=f"dense ({xs[0]:,})")
            else:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label,
                            color=colors[label])
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


def plot_curves(results: list[dict], path: Path, axis: str = "method",
                reference: dict | None = None) -> None:
    """Test accuracy (top) and training loss (bottom) per epoch, mean over seeds, one column
    per cell (data set, model, budget; for methods the dense model joins every budget);
    ``reference`` as in :func:`row_label`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[tuple, dict[str, list[list[dict]]]] = {}
    for r in results:
        s = r["settings"]
        cell = curves.setdefault((s["dataset"], s["model"], s["budget"]), {})
        cell.setdefault(row_label(s, axis, reference), []).append(r.get("history") or [])
    cells = [c for c in curves if c[2] is not None or axis != "method"]
    if not cells:
        return
    cols = min(CURVE_COLUMNS, len(cells))
    blocks = math.ceil(len(cells) / cols)
    fig, axes = plt.subplots(2 * blocks, cols, squeeze=False,
                             figsize=(4 * cols, 6.5 * blocks))
    colors = label_colors(label for cell in curves.values() for label in cell)
    for i, cell in enumerate(cells):
        top, bottom = axes[2 * (i // cols), i % cols], axes[2 * (i // cols) + 1, i % cols]
        runs = dict(curves[cell])
        if axis == "method":  # the dense reference belongs to every budget's cell
            runs |= curves.get((cell[0], cell[1], None), {})
        for label, histories in runs.items():
            epochs = min(len(h) for h in histories)
            if epochs == 0:
                continue
            for ax, key, scale in ((top, "test_accuracy", 100), (bottom, "train_loss", 1)):
                mean = [scale * sum(h[e][key] for h in histories) / len(histories)
                        for e in range(epochs)]
                ax.plot(range(1, epochs + 1), mean, label=label, color=colors[label])
        title = f"{cell[0]}, {cell[1]}" + ("" if cell[2] is None else f", budget {cell[2]:,}")
        top.set_title(title, fontsize=9)
        top.set_ylabel("test accuracy %")
        bottom.set_ylabel("train loss")
        bottom.set_yscale("log")
        bottom.set_xlabel("epoch")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
        top.legend(fontsize=6)
    for i in range(len(cells), blocks * cols):
        axes[2 * (i // cols), i % cols].axis("off")
        axes[2 * (i // cols) + 1, i % cols].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
