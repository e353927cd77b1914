"""MCNC beside the adapters a user would pick instead, fine-tuning SmolLM2-135M-Instruct on the
English Q/A pairs: mcnc's own adapters (MCNC, NOLA, LoRA rank 1) and peft's small ones
(FourierFT, WaveFT, Uni-LoRA, TinyLoRA, VB-LoRA, VeRA, RandLoRA), the latter run by peft itself,
untouched. Every run has the same data, order, steps, batch, schedule and target layers (every
linear layer of the 30 transformer blocks).

Cells: MCNC, NOLA, FourierFT, Uni-LoRA, TinyLoRA, VB-LoRA and WaveFT at four matched budgets of
trained numbers (1,500, 6,000, 26,880 and 100,000, a curve; each method's own knobs set the
count, reported exactly; the first table had 6,000 and 26,880 only), every peft
peer at its documented default, and LoRA rank 1 for scale; also MCNC with its factors mixed
by a seeded Hadamard transform (``mcnc-mixed``: every chunk moves entries of every layer, as
each of Uni-LoRA's numbers does), a candidate for where MCNC trails.

Learning rates: one ladder for every cell (1e-4 to 3, steps of ~3). Each cell first runs three
rungs around a start value at seed 0, then adds the next rung while the best is at an end of
the rungs tried, so the best ends strictly inside. Then the other seeds at the best rate. The
sweep is at the full length, so seed 0 of the main runs is the sweep's best run.

``--grid fair`` is the fair table (issue 33): MCNC (mixed factors, beta at 0.3x) against
Uni-LoRA at ranks 1, 4 and 16, WaveFT and the other peers, MCNC also at ranks 4 and 1, run for
900 steps with an evaluation every 50 and every run ranked by its best evaluation, not its
last.

Runs append to ``<out>/runs.jsonl`` as they finish and are never repeated, so the benchmark can
be stopped and restarted (the sweep resumes where it was); a run in progress keeps its state in
``<out>/checkpoints`` every 50 steps and continues from it, with the bits of a run never
stopped (the folder is empty when nothing is in progress). ``--jobs 2`` runs two single-threaded
runs at once (each in a fresh process, so its peak memory is its own); when one ends, the next
pending run of the earliest cell that has one starts at once.

    python benchmarks/finetune_peers.py --out results/finetune-peers --jobs 2
    python benchmarks/finetune_peers.py --out results/finetune-peers --report-only
    python benchmarks/finetune_peers.py --grid fair --steps 900 --eval-every 50 --seeds 3 \
        --out results/adapter-fair --jobs 2 --threads 1
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import statistics
import tempfile
import time
import warnings
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from mcnc.apps.comparison_report import machines_line, welch
from mcnc.apps.machine import machine_line
from mcnc.apps.rates import ADAPTER_LR
from mcnc.apps.worker_pool import process_pool

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; hold_folder says so
    fcntl = None

LADDER = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)
BUDGETS = (6_000, 26_880, 1_500, 100_000)
"""About 6,000 and 26,880 trained numbers (the second is 64 NOLA coefficients for each of the
420 factors, the paper's NOLA ratio on LLaMA-2), then 1,500 and 100,000 to make a curve
(after the first two, so that runs already recorded keep their place in the schedule)."""
MATCHED = ("mcnc", "nola", "fourierft", "unilora", "tinylora", "vblora", "waveft")
"""Methods that can be set to both budgets (VeRA and RandLoRA cannot go below 155,730 and
218,880 trained numbers on this model: results/finetune/peer_budgets.md)."""
DEFAULTS = ("fourierft", "unilora", "tinylora", "vblora", "vera", "randlora", "waveft")
DEFAULT_MODEL = "smollm2-135m"
MODEL_TITLES = {DEFAULT_MODEL: "SmolLM2-135M-Instruct",
                "tiny-llama": "A tiny random Llama (a trial of the benchmark, not a result)"}
START = {"mcnc": 0.3, "nola": 0.1, "lora": 1e-2}
"""Where each method's sweep starts (mcnc's: their earlier 80-step sweep; peft's: 1e-2)."""


@dataclass(frozen=True)
class Cell:
    """One row of the table: a method with its knobs."""

    label: str
    settings: dict = field(hash=False)
    """FinetuneSettings fields besides lr, seed and steps."""
    rate: float | None = None
    """A fixed learning rate (no sweep), e.g. the default being checked."""
    first_rate: float | None = None
    """Where the sweep starts, if not at the method's START (e.g. its best at 300 steps)."""
    versus: str = "mcnc"
    """The label (less its budget) of the row this one is compared with in *vs MCNC*."""

    @property
    def start(self) -> float:
        return self.first_rate or START.get(self.settings["method"], 1e-2)


BEFORE_03 = {"mixing": "none", "beta_lr_scale": 1.0}
"""The MCNC adapter's settings before version 0.3 made the mixing and beta at 0.3x of its
relative rate the defaults: the grids measured before keep them, so their tables stay whole."""
OLD_BETA_RATE = {"beta_rate": "absolute", **BEFORE_03}
"""The peers and adapter-held-in grids were measured before beta's rate became relative to its
size: their MCNC cells keep the absolute rate (and the other old defaults)."""


def peer_cells() -> list[Cell]:
    out = [Cell(f"{m} @ {b:,}", {"method": m, "budget": b,
                                  **(OLD_BETA_RATE if m == "mcnc" else {})})
           for b in BUDGETS for m in MATCHED]
    out += [Cell(f"mcnc-mixed @ {b:,}", {"method": "mcnc", "budget": b, **OLD_BETA_RATE,
                                         "mixing": "hadamard"}) for b in BUDGETS]
    out += [Cell(f"{m} default", {"method": m, "budget": 0}) for m in DEFAULTS]
    out.append(Cell("lora r1", {"method": "lora", "rank": 1}))
    return out


VISION_GENERATOR = {"depth": 2, "width": 64, "hidden_gain": 8.0}
"""The generator the image side chose (results/held-in): two hidden layers of 64, gain 8."""
HELD_IN_CANDIDATES = {
    "mcnc": {},
    "mcnc-mixed": {"mixing": "hadamard"},
    "mcnc-mixed gen-vision": {"mixing": "hadamard", "mcnc_options": VISION_GENERATOR},
    "mcnc-joint": {"mixing": "hadamard-joint"},
    "mcnc-mixed beta x0.3": {"mixing": "hadamard", "beta_lr_scale": 0.3},
    "mcnc-joint beta x0.3": {"mixing": "hadamard-joint", "beta_lr_scale": 0.3},
    "mcnc-mixed beta x3": {"mixing": "hadamard", "beta_lr_scale": 3.0},
    "mcnc-mixed alpha-centre": {"mixing": "hadamard",
                                "mcnc_options": {"alpha_init_scale": 0.1}},
    "mcnc-mixed r4": {"mixing": "hadamard", "rank": 4},
    "mcnc r4": {"rank": 4},
    "mcnc gen-vision": {"mcnc_options": VISION_GENERATOR},
}
"""The MCNC adapter's held-in candidates (issue 33): today's default first, then each
candidate by the settings it changes, most promising first (the rolling schedule runs the
earlier cells first). Most build on the Hadamard mixing, the best setting so far."""


def held_in_cells() -> list[Cell]:
    """The candidates at 6,000 trained numbers (the screen), then at 26,880."""
    return [Cell(f"{name} @ {b:,}", {"method": "mcnc", "budget": b, **OLD_BETA_RATE, **change})
            for b in BUDGETS for name, change in HELD_IN_CANDIDATES.items()]


RELATIVE_CANDIDATES = {
    "mcnc-mixed": {"mixing": "hadamard"},
    "mcnc-mixed beta x0.3": {"mixing": "hadamard", "beta_lr_scale": 0.3},
    "mcnc-mixed beta x0.1": {"mixing": "hadamard", "beta_lr_scale": 0.1},
    "mcnc-joint beta x0.3": {"mixing": "hadamard-joint", "beta_lr_scale": 0.3},
    "mcnc-joint beta x0.1": {"mixing": "hadamard-joint", "beta_lr_scale": 0.1},
    "mcnc-joint beta x0.03": {"mixing": "hadamard-joint", "beta_lr_scale": 0.03},
    "mcnc-joint beta x0.01": {"mixing": "hadamard-joint", "beta_lr_scale": 0.01},
}
"""Held-in candidates under the relative rule, at the default rate (a one-seed screen first).
With the rule, beta's rate is ``lr * scale * typical beta``: the typical beta is ~2 for the
mixed adapter at 6,000 and ~9.5 for the joint one (whose entries start at 2 % of their spread),
so the joint candidates need a much smaller scale to keep beta's steps near the rate the
absolute rule gave it (0.3 there)."""


ADOPTED = RELATIVE_CANDIDATES["mcnc-mixed beta x0.3"]
SECOND_ROUND = {
    "mcnc-mixed beta x0.3 alpha-centre": {**ADOPTED, "mcnc_options": {"alpha_init_scale": 0.1}},
    "mcnc-mixed beta x0.3 frozen-a": {**ADOPTED, "mcnc_options": {"freeze_a": True}},
    "mcnc-mixed beta x0.3 b-start": {**ADOPTED, "mcnc_options": {"b_start": 0.02}},
    "mcnc-mixed beta x0.3 gen-vision": {**ADOPTED, "mcnc_options": VISION_GENERATOR},
    "mcnc-mixed beta x0.3 r4": {**ADOPTED, "rank": 4},
    "mcnc-mixed beta x0.3 k3": {**ADOPTED, "mcnc_options": {"k": 3}},
    "mcnc-mixed beta x0.3 k8": {**ADOPTED, "mcnc_options": {"k": 8}},
    "mcnc-mixed beta x0.3 m2": {**ADOPTED, "mcnc_options": {"m": 2}},
    "mcnc-mixed beta x0.3 a-half": {**ADOPTED, "mcnc_options": {"a_start": 0.5}},
    "mcnc-mixed beta x0.3 b-start alpha-centre": {
        **ADOPTED, "mcnc_options": {"b_start": 0.02, "alpha_init_scale": 0.1}},
    "mcnc-mixed beta x0.3 linear": {**ADOPTED, "mcnc_options": {"activation": "linear"}},
    "mcnc-mixed beta x0.3 linear alpha x0.3": {
        **ADOPTED, "mcnc_options": {"activation": "linear", "alpha_init_scale": 0.3}},
    "mcnc-mixed beta x0.3 linear alpha x0.1": {
        **ADOPTED, "mcnc_options": {"activation": "linear", "alpha_init_scale": 0.1}},
}
"""The second round of held-in candidates, each one change from the adopted default (the
defaults since 0.3): alphas near the cube's centre, the image side's generator, rank 4, k and
m (at a fixed budget, k and m change the chunk size d), A starting at half LoRA's spread,
B starting small but not at zero (as the joint candidates' 0.02), and A frozen at LoRA's start
with every trained number spent on B (``freeze_a``, added later), and (added after the
26,880 screen's first seeds put them ahead) B's small start and the central alphas together,
and (added 2026-12-08) the linear control: the same chunks, numbers and mixing with a linear
generator, so each chunk is beta times a unit vector of one random k-dimensional subspace (no
manifold). Its direction depends only on alpha's direction, so the alphas' start
(``alpha_init_scale``, 1 or 0.3) sets how far a step turns it. A rough estimate: an Adam step
of 0.3 on each of k = 5 alphas turns the linear generator's output by about 0.67 / 26 = 0.026
rad from the whole cube (|alpha| ~ L sqrt(k / 3)) and 0.086 rad at 0.3, where it moves the
sine generator's first-layer pre-activations by about 0.08 (weights U(+-1/k)): at 0.3 the two
turn about alike, at 1 the linear one about three times slower (0.1 was added when 0.3 beat
1, to find the control's best start).
The order is only the schedule: the two that change where the factors start were moved up to
run before the rest. A one-seed screen at 6,000 first, then at 26,880, where MCNC trails
Uni-LoRA most."""


def beta_rate_cells() -> list[Cell]:
    """The MCNC adapter at its defaults before 0.3 (lr 0.3, beta's rate relative to its typical
    size, unmixed) at every budget, the old absolute rate where it should fail (100,000) or is
    unmeasured, the held-in candidates under the relative rule at the same rate, the one
    adopted as the default at the other two budgets, and the second round of candidates at
    6,000 and 26,880."""
    def cell(name: str, budget: int, change: dict, versus: str = "mcnc") -> Cell:
        return Cell(f"{name} @ {budget:,}", {"method": "mcnc", "budget": budget,
                                             "beta_rate": "relative", **BEFORE_03, **change},
                    rate=ADAPTER_LR["mcnc"], versus=versus)
    absolute = {"beta_rate": "absolute"}
    out = [cell("mcnc", 100_000, {}), cell("mcnc beta absolute", 100_000, absolute),
           cell("mcnc", 1_500, {}), cell("mcnc", 26_880, {}), cell("mcnc", 6_000, {}),
           cell("mcnc beta absolute", 1_500, absolute)]
    out += [cell(name, b, change) for b in (6_000, 26_880)
            for name, change in RELATIVE_CANDIDATES.items()]
    # the defaults since 0.3: do they train at every budget? Then the second round's screen.
    adopted = "mcnc-mixed beta x0.3"
    out += [cell(adopted, b, ADOPTED) for b in (1_500, 100_000)]
    out += [cell(name, b, change, versus=adopted) for b in (6_000, 26_880)
            for name, change in SECOND_ROUND.items()]
    # one rung lower: the image side's generator changes the scale of a step, and the default's
    # best rate at 26,880 moved to 0.1 in the first peer table
    lower = [(f"{adopted} gen-vision", 6_000, SECOND_ROUND[f"{adopted} gen-vision"]),
             (adopted, 26_880, ADOPTED)]
    out += [replace(cell(f"{name} lr 0.1", b, change, versus=adopted), rate=0.1)
            for name, b, change in lower]
    # alpha's steps 3.3x larger, beta's about as large (1 x 0.1 against 0.3 x 0.3): the
    # linear control turned better with larger steps (added 2026-12-08)
    faster = {**ADOPTED, "beta_lr_scale": 0.1}
    return [*out, replace(cell("mcnc-mixed beta x0.1 lr 1", 6_000, faster, versus=adopted),
                          rate=1.0)]


FAIR_MCNC = {"method": "mcnc", "mixing": "hadamard", "beta_rate": "relative",
             "beta_lr_scale": 0.3}
"""The MCNC adapter of the fair table: factors mixed apart, beta at 0.3x its relative rate
(the held-in programme's best at 6,000; written out so the grid does not move with the
defaults)."""
UNILORA_START = {6_000: 0.1, 26_880: 0.03}
"""Uni-LoRA's best rate at 300 steps (results/finetune-peers), where its fair sweep starts."""
FAIR_MCNC_START = 0.1
"""Where MCNC's fair sweeps start: its best rate at 900 steps and 6,000 numbers (that cell's
sweep started at 0.3, ``START``, and ran 0.03..1)."""


def fair_cells() -> list[Cell]:
    """At each budget: MCNC, Uni-LoRA at ranks 4, 1 and 16, MCNC at ranks 4 and 1, WaveFT and
    the other matched peers; then VeRA and RandLoRA at their defaults and LoRA rank 1. Meant
    for ``--steps 900 --eval-every 50``, scored by the best evaluation; each sweep starts at
    the method's best rate at 300 steps where one was measured."""
    out = []
    for b in BUDGETS:
        unilora = UNILORA_START.get(b, 0.03)
        out.append(Cell(f"mcnc @ {b:,}", {**FAIR_MCNC, "budget": b},
                        first_rate=FAIR_MCNC_START))
        out += [Cell(f"unilora r{r} @ {b:,}", {"method": "unilora", "budget": b, "peer_rank": r},
                     first_rate=unilora) for r in (4, 1, 16)]
        out += [Cell(f"mcnc r{r} @ {b:,}", {**FAIR_MCNC, "budget": b, "rank": r},
                     first_rate=FAIR_MCNC_START) for r in (4, 1)]
        out += [Cell(f"{m} @ {b:,}", {"method": m, "budget": b}, first_rate=ADAPTER_LR.get(m))
                for m in ("waveft", "nola", "fourierft", "tinylora", "vblora")]
    out += [Cell(f"{m} default", {"method": m, "budget": 0}, first_rate=ADAPTER_LR[m])
            for m in ("vera", "randlora")]
    out.append(Cell("lora r1", {"method": "lora", "rank": 1}, first_rate=ADAPTER_LR["lora"]))
    return out


GRIDS = {"peers": peer_cells, "adapter-held-in": held_in_cells, "beta-rate": beta_rate_cells,
         "fair": fair_cells}
SCORES = ("final", "best-eval")
GRID_SCORES = {"fair": "best-eval"}
"""What a grid's sweeps and verdicts rank by unless ``--score`` says otherwise: the
validation loss after the last step, or the lowest of the run's evaluations (for runs long
enough to pass their best; every method alike)."""
GRID_TITLES = {"peers": "MCNC beside peft's small adapters",
               "beta-rate": "the MCNC adapter (unmixed, beta at 1x: the defaults before 0.3) "
                            "at its default rate with beta's rate relative to its typical "
                            "size (vs MCNC: the absolute rate and the first held-in candidates "
                            "against it; the second round against the defaults since 0.3, "
                            "mcnc-mixed beta x0.3)",
               "adapter-held-in": "the MCNC adapter's held-in candidates (vs MCNC: against "
                                  "today's default at the same budget)",
               "fair": "MCNC against peft's adapters, each at its own rank and rate, scored "
                       "by the best evaluation"}
"""``--grid``: the side-by-side table, or the held-in programme of the MCNC adapter."""


def cells(grid: str = "peers") -> list[Cell]:
    return GRIDS[grid]()


BASE = Cell("no adapter", {"method": "lora", "rank": 1})
"""The base model: a LoRA adapter before any step (its update is zero)."""


def run_key(cell: Cell, lr: float, seed: int, steps: int) -> str:
    return f"{cell.label}|lr={lr:g}|seed={seed}|steps={steps}"


def _loss(record: dict, score: str = "final") -> float:
    """The number a run is ranked by (lower is better; a diverged run is worst): its final
    validation loss, or with ``score="best-eval"`` the lowest of its curve's evaluations."""
    if record.get("diverged"):
        return float("inf")
    if score == "best-eval" and record.get("curve"):
        return min(p["val_loss"] for p in record["curve"])
    return record["val_loss"]


def sweep_of(cell: Cell, done: dict[str, dict], steps: int) -> dict[float, dict]:
    """The cell's finished seed-0 runs by learning rate."""
    return {lr: done[k] for lr in LADDER if (k := run_key(cell, lr, 0, steps)) in done}


def next_runs(cell: Cell, done: dict[str, dict], steps: int, seeds: int,
              rate: float | None = None, score: str = "final") -> list[tuple[float, int]]:
    """The (lr, seed) runs the cell needs next: the three start rungs (the start first, the
    likeliest best, so that a partial sweep already compares methods), then one more rung
    while the best is at an end of those tried, then the other seeds at the best rate; with
    a fixed ``rate`` (chosen elsewhere), no sweep: every seed at that rate."""
    if rate is not None:
        return [(rate, s) for s in range(seeds) if run_key(cell, rate, s, steps) not in done]
    sweep = sweep_of(cell, done, steps)
    i = LADDER.index(cell.start)
    missing = [lr for lr in (LADDER[i], *LADDER[max(0, i - 1):i], *LADDER[i + 1:i + 2])
               if lr not in sweep]
    if missing:
        return [(lr, 0) for lr in missing]
    best = min(sweep, key=lambda lr: _loss(sweep[lr], score))
    j = LADDER.index(best)
    if best == min(sweep) and j > 0:
        return [(LADDER[j - 1], 0)]
    if best == max(sweep) and j < len(LADDER) - 1:
        return [(LADDER[j + 1], 0)]
    return [(best, s) for s in range(1, seeds) if run_key(cell, best, s, steps) not in done]


def seed_runs(cell: Cell, lr: float, done: dict[str, dict], steps: int) -> list[dict]:
    """The cell's finished runs at ``lr``: every seed recorded (also beyond ``--seeds``)."""
    return sorted((r for k, r in done.items() if k == run_key(cell, lr, r["seed"], steps)),
                  key=lambda r: r["seed"])


def best_rates(done: dict[str, dict], steps: int, grid: str,
               score: str = "final") -> dict[str, float]:
    """Cell label -> the best rate of its finished sweep at ``steps`` in ``done``."""
    rates = {}
    for cell in cells(grid):
        if sweep := sweep_of(cell, done, steps):
            rates[cell.label] = min(sweep, key=lambda lr: _loss(sweep[lr], score))
    return rates


def fixed_rate(cell: Cell, args: argparse.Namespace) -> float | None:
    """The rate a cell trains at without a sweep (``--rates-from``, else its own), or None."""
    return args.rates.get(cell.label, cell.rate)


def _read_runs(path: Path) -> dict[str, dict]:
    """A runs.jsonl by key ({} if the file does not exist yet)."""
    if not path.exists():
        return {}
    return {r["key"]: r for r in map(json.loads, path.read_text().splitlines())}


CHECKPOINT_EVERY = 50
"""Steps between the checkpoints of a run (``out/checkpoints``): a stopped benchmark's runs
continue from their last one, losing at most this many steps each."""


def checkpoint_path(out: Path, key: str) -> Path:
    """Where the run ``key`` keeps its checkpoint while it trains: the key made safe for a
    file name, and 8 hex digits of its hash (two keys that read alike stay apart)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return out / "checkpoints" / f"{re.sub(r'[^A-Za-z0-9.=-]+', '_', key)}-{digest}.safetensors"


def _run_in_worker(settings: dict, threads: int, checkpoint: Path | None = None) -> dict:
    """One fine-tuning run in this (fresh) process; the adapter goes to a scratch folder, the
    run's state to ``checkpoint`` every ``CHECKPOINT_EVERY`` steps (resumed if it is there)."""
    import torch

    from mcnc.apps.finetune import CheckpointMismatch, FinetuneSettings, finetune
    from mcnc.core.errors import DivergedError

    torch.set_num_threads(threads)
    run = FinetuneSettings(**settings, progress=False, checkpoint_every=CHECKPOINT_EVERY,
                           checkpoint=None if checkpoint is None else str(checkpoint))
    with tempfile.TemporaryDirectory() as scratch:
        try:
            try:
                return finetune(replace(run, out=scratch))
            except CheckpointMismatch:  # left by an older version of the cell: start over
                checkpoint.unlink()
                return finetune(replace(run, out=scratch))
        except DivergedError as error:
            return {**settings, "diverged": True, "error": str(error), "machine": machine_line()}


def _settings(cell: Cell, lr: float, seed: int, args: argparse.Namespace) -> dict:
    return {**cell.settings, "model": args.model, "lr": lr, "seed": seed,
            "steps": args.steps, "eval_every": args.eval_every}


def pending(chosen: list[Cell], done: dict[str, dict],
            args: argparse.Namespace) -> list[tuple[str, dict]]:
    """The runs (key, settings) the chosen cells need next given ``done``, in cell order (so
    earlier cells come first; with ``args.interleave``, each cell's first pending run, then
    each one's second, and so on), and the base model's evaluation while it is missing."""
    per_cell = [[(run_key(c, lr, seed, args.steps), _settings(c, lr, seed, args))
                 for lr, seed in next_runs(c, done, args.steps, args.seeds,
                                           fixed_rate(c, args), args.score)]
                for c in chosen if not args.rates_from or c.label in args.rates]
    if args.interleave:
        rounds = itertools.zip_longest(*per_cell)
        todo = [run for runs in rounds for run in runs if run is not None]
    else:
        todo = [run for runs in per_cell for run in runs]
    base_key = run_key(BASE, LADDER[0], 0, 0)
    if base_key not in done:
        todo.append((base_key, {**BASE.settings, "model": args.model, "lr": LADDER[0],
                                "seed": 0, "steps": 0}))
    return todo


def run_all(chosen: list[Cell], args: argparse.Namespace, log: Path,
            done: dict[str, dict]) -> None:
    """Run what the chosen cells need, ``args.jobs`` at a time, appending each result to
    ``log``. Rolling: as soon as a run ends, its cell's next run (the next rung, the next
    seed) is worked out and a free worker takes the first pending run, so no core waits for
    a slower cell's run to finish."""
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    running: dict[Future, str] = {}
    with process_pool(args.jobs, max_tasks_per_child=1) as pool:
        while True:
            for key, settings in pending(chosen, done, args):
                if len(running) == args.jobs:
                    break
                if key not in running.values():
                    running[pool.submit(_run_in_worker, settings, threads,
                                        checkpoint_path(log.parent, key))] = key
            if not running:
                return
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                key = running.pop(future)
                record = future.result() | {"key": key}
                record.pop("losses", None)
                with open(log, "a") as f:
                    f.write(json.dumps(record) + "\n")
                done[key] = record
                loss = ("diverged" if record.get("diverged")
                        else f"val loss {record['val_loss']:.4f}")
                print(f"{time.strftime('%H:%M')} {key}: {loss} "
                      f"({record.get('train_seconds', 0):.0f} s)", flush=True)


def _fmt(values: list[float], scale: float = 1.0, digits: int = 4) -> str:
    mean = statistics.mean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({len(values)})"


def _late(records: list[dict]) -> str:
    """Mean change of validation loss over the last fifth of the steps."""
    changes = []
    for r in records:
        curve = r.get("curve") or []
        if len(curve) >= 2:
            last = curve[-1]["step"]
            early = [p for p in curve if p["step"] <= last * 0.8][-1]
            changes.append(curve[-1]["val_loss"] - early["val_loss"])
    return f"{statistics.mean(changes):+.4f}" if changes else "n/a"


def _best_eval(records: list[dict]) -> str:
    """Mean over seeds of the lowest validation loss of each run's curve, and the mean step
    of it: the loss at the best evaluation, reported for every method alike."""
    best = [min(r["curve"], key=lambda p: p["val_loss"]) for r in records if r.get("curve")]
    if not best:
        return "n/a"
    return (f"{statistics.mean(p['val_loss'] for p in best):.4f} "
            f"(step {statistics.mean(p['step'] for p in best):.0f})")


def cell_rows(done: dict[str, dict], args: argparse.Namespace) -> list[dict]:
    """Per cell: the best rate, the rungs tried and the records at the best rate."""
    rows = []
    for cell in cells(args.grid):
        sweep = sweep_of(cell, done, args.steps)
        if not sweep:
            continue
        best = min(sweep, key=lambda lr: _loss(sweep[lr], args.score))
        records = seed_runs(cell, best, done, args.steps)
        finished = not next_runs(cell, done, args.steps, args.seeds,
                                 fixed_rate(cell, args), args.score)
        rows.append({"cell": cell, "lr": best, "tried": sorted(sweep), "records": records,
                     "finished": finished})
    return rows


_AGAINST_DEFAULT = {"win": "worse than the default", "loss": "better than the default",
                    "tie": "tie"}
_AGAINST_MCNC = {"win": "MCNC wins", "loss": "MCNC loses", "tie": "tie"}
VERDICTS = {"peers": _AGAINST_MCNC, "fair": _AGAINST_MCNC,
            "adapter-held-in": _AGAINST_DEFAULT, "beta-rate": _AGAINST_DEFAULT}
"""The words of a Welch verdict against the cell's MCNC row, per grid (in the held-in and
beta-rate grids that row is today's default and the other rows are candidates)."""


def _reference_row(row: dict, rows: list[dict]) -> dict | None:
    """The row ``row`` is compared with (``Cell.versus``: MCNC's) at the same budget; None
    for that row itself and for rows without a budget."""
    budget = row["cell"].settings.get("budget")
    label = f"{row['cell'].versus} @ {budget:,}" if budget else None
    reference = next((r for r in rows if r["cell"].label == label), None)
    return None if reference is row else reference


def _versus_mcnc(row: dict, rows: list[dict], grid: str = "peers", score: str = "final") -> str:
    """The score (validation loss) against that of the row the cell names (``Cell.versus``:
    MCNC's) at the same budget (negative: lower than that row's)."""
    reference = _reference_row(row, rows)
    if reference is None or any(r.get("diverged") for r in row["records"]):
        return ""
    stats = [(statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
             for v in ([_loss(r, score) for r in x["records"]] for x in (row, reference))]
    diff, se, verdict = welch(stats[0], stats[1])
    if se is None:
        return f"{diff:+.4f} (1 seed: no test)"
    # Lower loss is better: a peer "wins" against MCNC when its loss is lower by > 2 SE.
    word = VERDICTS[grid][verdict]
    return f"{diff:+.4f} ± {se:.4f}: **{word}**"


def _train_gap(row: dict, rows: list[dict]) -> str:
    """Training loss (mean over the last tenth of the steps) minus that of MCNC's row at the
    same budget, seed by seed (runs of one seed see the same batches), averaged over the seeds
    both have."""
    reference = _reference_row(row, rows)
    if reference is None:
        return ""
    theirs = {r["seed"]: r["train_loss"] for r in reference["records"]}
    gaps = [r["train_loss"] - theirs[r["seed"]] for r in row["records"] if r["seed"] in theirs]
    return f"{statistics.mean(gaps):+.4f} ({len(gaps)})" if gaps else ""


def _cpus(records: list[dict]) -> str:
    """The short names of the machines the runs trained on ("AMD EPYC", "Intel Xeon"): speeds
    compare only between rows of one machine."""
    names = sorted({r.get("machine", "?").split(",")[0].replace("(R)", "").replace(" Processor", "")
                    for r in records})
    return " + ".join(names)


def table(done: dict[str, dict], args: argparse.Namespace) -> str:
    rows = cell_rows(done, args)
    base = done.get(run_key(BASE, LADDER[0], 0, 0))
    seconds = sum(r.get("train_seconds", 0) for r in done.values())
    machines = Counter(r["machine"] for r in done.values() if "machine" in r)
    rate_rule = ("the best of the ladder 1e-4..3 (steps of ~3), strictly inside the rungs "
                 "tried (sweep.md)" if not args.rates_from else
                 f"each cell's best at {args.rates_steps} steps in {args.rates_from} "
                 "(no sweep at this length)")
    scored = ("the lowest validation loss of its evaluations (*best eval*), every method "
              "alike" if args.score == "best-eval" else "the validation loss after the last step")
    command = " ".join(["python benchmarks/finetune_peers.py", f"--out {args.out}",
                        f"--jobs {args.jobs}"]
                       + ([f"--grid {args.grid}"] if args.grid != "peers" else [])
                       + ([f"--score {args.score}"]
                          if args.score != GRID_SCORES.get(args.grid, "final") else [])
                       + ([f"--model {args.model}"] if args.model != DEFAULT_MODEL else [])
                       + ([f"--steps {args.steps} --eval-every {args.eval_every} "
                           f"--seeds {args.seeds}"] if args.steps != 300 else [])
                       + ([f"--rates-from {args.rates_from}"] if args.rates_from else [])
                       + ([f'--cells "{args.cells}"'] if args.cells != "." else []))
    lines = [
        f"# {MODEL_TITLES.get(args.model, args.model)}: {GRID_TITLES[args.grid]}",
        "",
        f"{args.steps} steps, batch 4, at most 128 tokens, English chatterbot Q/A pairs "
        "(1,044 train / 116 validation), every linear layer of the transformer blocks; "
        "AdamW, 5% warm-up then cosine decay to 10%. Loss and token accuracy (greedy "
        f"next-token prediction) over the validation answers. Learning rate: {rate_rule}. "
        f"A run is ranked (rate sweep, *vs MCNC*) by {scored}. "
        "mean ± std "
        "(seeds). *vs MCNC*: validation loss minus MCNC's at the same budget ± Welch standard "
        "error; a verdict only beyond 2 SE. *train loss*: mean training loss over the last "
        "tenth of the steps; *train loss vs MCNC*: minus MCNC's at the same budget, seed by "
        "seed (runs of one seed see the same batches; mean over the seeds both have, their "
        "count in brackets). *late*: change of "
        "validation loss over the last "
        "fifth of the steps. *best eval*: the lowest validation loss of each run's curve "
        "(mean over seeds, and the mean step where it was reached). Train tokens/s: median "
        "over seeds, on the machine named (they "
        "differ, and a run shares the machine with another run, so speeds are rough; compare "
        "them within one machine). Peak memory: the process's peak resident set while "
        "training (model included) on a CPU, CUDA memory allocated on a GPU. Merge error: largest "
        "logit change from merging, relative to the largest logit.",
        "",
        f"Command: `{command}`  ",
        machines_line(dict(machines)),
        f"Training time of all runs: {seconds / 3600:.1f} h (summed over runs).",
        "",
    ]
    if base:
        lines += [f"Base model without adapter: validation loss {base['val_loss']:.4f}, token "
                  f"accuracy {100 * base['token_accuracy']:.2f}%.", ""]
    lines += [
        "| adapter | trained numbers | lr (rungs tried) | val loss | vs MCNC | train loss "
        "| train loss vs MCNC | token acc. % | late | best eval | file bytes | without projection "
        "| train tokens/s (machine) | peak memory MiB | merge error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rs, cell = row["records"], row["cell"]
        label = cell.label + ("" if row["finished"] else " (unfinished)")
        tried = f"{row['lr']:g} ({min(row['tried']):g}..{max(row['tried']):g})"
        if any(r.get("diverged") for r in rs):
            lines.append(f"| {label} | | {tried} | diverged | | | | | | | | | | | |")
            continue
        lean = rs[0].get("adapter_bytes_without_projection")
        memory = [r["peak_memory_bytes"] for r in rs if r.get("peak_memory_bytes")]
        lines.append(
            f"| {label} | {rs[0]['trainable']:,} | {tried} "
            f"| {_fmt([r['val_loss'] for r in rs])} "
            f"| {_versus_mcnc(row, rows, args.grid, args.score)} "
            f"| {_fmt([r['train_loss'] for r in rs])} | {_train_gap(row, rows)} "
            f"| {_fmt([r['token_accuracy'] for r in rs], 100, 2)} | {_late(rs)} | {_best_eval(rs)} "
            f"| {rs[0]['adapter_bytes']:,} | {f'{lean:,}' if lean else '-'} "
            f"| {statistics.median(r['train_tokens_per_s'] for r in rs):.0f} ({_cpus(rs)}) "
            f"| {f'{max(memory) / 2**20:,.0f}' if memory else 'n/a'} "
            f"| {max(r['merge_error'] for r in rs):.1e} |")
    return "\n".join(lines + curve_table(rows)) + "\n"


CURVE_STEPS = (100, 300, 500, 700, 900)
"""Where :func:`curve_table` reads the validation curves."""


def curve_table(rows: list[dict]) -> list[str]:
    """Validation loss along training at each cell's best rate (mean over its seeds), for the
    rows whose runs were evaluated at :data:`CURVE_STEPS`: when a gap opens, and whether it
    closes."""
    def at(records: list[dict], step: int) -> str:
        values = [p["val_loss"] for r in records for p in r.get("curve") or []
                  if p["step"] == step]
        return f"{statistics.mean(values):.4f}" if len(values) == len(records) else "-"

    values = {row["cell"].label: {s: at(row["records"], s) for s in CURVE_STEPS} for row in rows}
    steps = [s for s in CURVE_STEPS if any(row[s] != "-" for row in values.values())]
    if len(steps) < 2:  # no curves, or only the final evaluation: nothing to follow
        return []
    lines = [f"| {label} | " + " | ".join(row[s] for s in steps) + " |"
             for label, row in values.items()]
    header = " | ".join(f"step {s}" for s in steps)
    return ["", "Validation loss along training (best rate, mean over seeds):", "",
            f"| adapter | {header} |", "|---|" + "---|" * len(steps), *lines]


def sweep_table(done: dict[str, dict], args: argparse.Namespace) -> str:
    """Every rung of every cell's sweep: the final validation loss and the best evaluation
    (the rate is chosen by the one ``args.score`` names)."""
    ranked = "the best evaluation" if args.score == "best-eval" else "the final validation loss"
    lines = ["# Learning-rate sweep (seed 0, full length)", "",
             f"Each cell's rate is the rung with the lowest {ranked.removeprefix('the ')}.", "",
             "| adapter | lr | final val loss | best eval (step) | token acc. % |",
             "|---|---|---|---|---|"]
    for row in cell_rows(done, args):
        for lr in row["tried"]:
            r = done[run_key(row["cell"], lr, 0, args.steps)]
            result = ("diverged | - | -" if r.get("diverged")
                      else f"{r['val_loss']:.4f} | {_best_eval([r])} | "
                           f"{100 * r['token_accuracy']:.2f}")
            lines.append(f"| {row['cell'].label} | {lr:g} | {result} |")
    return "\n".join(lines) + "\n"


def plot_curves(done: dict[str, dict], args: argparse.Namespace, path: Path) -> None:
    """Validation loss against step, one panel per budget group, every seed at the best
    rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [f"@ {b:,}" for b in BUDGETS] + ["default", "r1"]
    rows = cell_rows(done, args)
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), sharey=True)
    for ax, group in zip(axes, groups, strict=True):
        for colour, row in enumerate(r for r in rows if r["cell"].label.endswith(group)):
            for i, r in enumerate(row["records"]):
                curve = r.get("curve") or []
                ax.plot([p["step"] for p in curve], [p["val_loss"] for p in curve],
                        color=f"C{colour}", label=row["cell"].label if i == 0 else None,
                        alpha=0.8)
        ax.set_title(group.removeprefix("@ ") if group.startswith("@") else group)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
    axes[0].set_ylabel("validation loss")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def hold_folder(out: Path) -> IO:
    """Lock ``out`` for this process (released when it ends): a second benchmark on the same
    folder would repeat the first one's runs, and both would share the cores, which slows
    every run and skews its speed."""
    handle = open(out / ".running", "w")  # noqa: SIM115 (held open until the process ends)
    if fcntl is None:
        warnings.warn("this platform has no fcntl: the folder is not locked, so do not start a "
                      "second benchmark on the same --out", stacklevel=2)
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(f"another finetune_peers.py is already running on {out}; wait for "
                           "it to end (its runs resume from runs.jsonl) or pick another --out"
                           ) from None
    return handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/finetune-peers")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"{DEFAULT_MODEL}, or tiny-llama to try the benchmark in seconds")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=60,
                        help="validation curve: evaluate every N steps (60: the last fifth of 300)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds at each cell's best rate")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch threads per run (default: the "
                        "cores shared out among --jobs)")
    parser.add_argument("--grid", default="peers", choices=sorted(GRIDS),
                        help="peers: MCNC beside peft's adapters; adapter-held-in and "
                        "beta-rate: the MCNC adapter's candidate settings; fair: MCNC against "
                        "the peers at their own ranks and rates, for long runs")
    parser.add_argument("--cells", default=".", help="regex: run only the cells it matches")
    parser.add_argument("--interleave", action="store_true",
                        help="start every chosen cell's next run before any cell's second "
                        "(default: the earliest cell's runs first), e.g. two methods' first "
                        "rungs side by side")
    parser.add_argument("--score", choices=SCORES,
                        help="rank runs by the final validation loss or by the best evaluation "
                        "(default: the grid's: best-eval for fair, else final)")
    parser.add_argument("--rates-from", help="no sweep: train each cell at its best rate in "
                        "this folder's runs (e.g. the 300-step benchmark, to check it at more "
                        "steps)")
    parser.add_argument("--rates-steps", type=int, default=300,
                        help="the length of the sweep --rates-from reads")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads {args.threads}: give 1 or more torch threads per run")
    args.score = args.score or GRID_SCORES.get(args.grid, "final")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    done = _read_runs(log)
    args.rates = {}
    if args.rates_from:
        args.rates = best_rates(_read_runs(Path(args.rates_from) / "runs.jsonl"),
                                args.rates_steps, args.grid, args.score)
        if not args.rates:
            parser.error(f"{args.rates_from}/runs.jsonl has no finished sweep at "
                         f"{args.rates_steps} steps (--rates-steps)")
    chosen = [c for c in cells(args.grid) if re.search(args.cells, c.label)]
    started = time.perf_counter()
    if not args.report_only:
        try:
            lock = hold_folder(out)
        except RuntimeError as error:
            parser.error(str(error))
        with lock:
            run_all(chosen, args, log, done)
    (out / "table.md").write_text(table(done, args))
    (out / "sweep.md").write_text(sweep_table(done, args))
    if done:
        plot_curves(done, args, out / "curves.png")
    print((out / "table.md").read_text())
    print(f"wall time this sitting: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
