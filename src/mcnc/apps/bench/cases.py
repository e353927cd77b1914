"""A benchmark case (one variant of one workload) and how a group of them is measured.

Variants of a workload (say ResNet-20 dense and MCNC) are timed in alternating rounds, each
against the workload's reference variant; then, after all timings, the peak memory of one call
of each variant is taken (see :func:`mcnc.apps.bench.measure.track_large_allocations`).
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from mcnc.apps.bench.measure import peak_extra_bytes, ratio_of_medians, time_calls


@dataclass
class Case:
    """One variant of one workload."""

    section: str
    """``reconstruction``, ``training`` or ``inference``."""
    workload: str
    variant: str
    run: Callable[[], object]
    """One unit of work: a reconstruction, a training step, a forward pass."""
    units: float
    """What one call produces: weights rebuilt, examples or tokens processed."""
    unit: str
    """``weights``, ``examples`` or ``tokens``."""
    info: dict = field(default_factory=dict)
    """Anything worth reporting beside the timing (trained numbers, FLOPs, notes)."""
    calls: int = 3
    """Timed calls per round."""
    warmup: int = 2
    time_scale: float = 1.0
    """Factor from the timed work to the whole work (PRANC's basis is timed on a slice)."""


@dataclass
class Measured:
    case: Case
    round_seconds: list[float]
    peak_extra_bytes: int | None = None
    ratio: dict | None = None
    """Time against the workload's reference variant (the first case of the group)."""
    reference: str = ""

    @property
    def seconds(self) -> float:
        return statistics.median(self.round_seconds) * self.case.time_scale

    @property
    def rate(self) -> float:
        return self.case.units / self.seconds

    def to_dict(self) -> dict:
        c = self.case
        return {"section": c.section, "workload": c.workload, "variant": c.variant,
                "median_s": self.seconds,
                "round_medians_s": [s * c.time_scale for s in self.round_seconds],
                f"{c.unit}_per_s": self.rate, "units": c.units, "unit": c.unit,
                "peak_extra_bytes": self.peak_extra_bytes,
                "reference": self.reference, "time_vs_reference": self.ratio, **c.info}


def measure_group(cases: list[Case], rounds: int) -> list[Measured]:
    """Time ``cases`` (variants of one workload) in ``rounds`` that take turns (A, B, A, B,
    ...), so the machine's slow and fast moments fall on all of them alike. The first case is
    the reference the others' times are divided by."""
    for case in cases:
        for _ in range(case.warmup):
            case.run()
    medians: dict[str, list[float]] = {c.variant: [] for c in cases}
    for _ in range(rounds):
        for case in cases:
            medians[case.variant].append(time_calls(case.run, case.calls, warmup=0).median)
    reference = cases[0]
    measured = [Measured(c, medians[c.variant], reference=reference.variant) for c in cases]
    for m in measured[1:]:
        m.ratio = ratio_of_medians([s * m.case.time_scale for s in m.round_seconds],
                                   [s * reference.time_scale for s in medians[reference.variant]])
    return measured


def measure_peaks(measured: list[Measured]) -> None:
    """Fill in the peak memory of one call of every case (after all timings).

    Every measurement collects garbage first; with the objects alive now frozen (out of the
    collector's sight, as none of them is garbage), each collection scans only what the cases
    made instead of every object of torch and transformers."""
    gc.collect()
    gc.freeze()
    try:
        for m in measured:
            _, m.peak_extra_bytes = peak_extra_bytes(m.case.run)
    finally:
        gc.unfreeze()
