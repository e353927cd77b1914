"""How the benchmarks measure: repeated timings summarised by their median, the peak memory of
one piece of work, and the two rates that bound weight generation on this machine.

The machine is shared and noisy, so every figure is the median of several runs, and the
spread (fastest, slowest) is kept beside it.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class Timing:
    """Seconds of ``repeats`` runs of one piece of work."""

    median: float
    fastest: float
    slowest: float
    repeats: int

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        return cls(statistics.median(seconds), min(seconds), max(seconds), len(seconds))

    def to_dict(self) -> dict:
        return {"median_s": self.median, "fastest_s": self.fastest, "slowest_s": self.slowest,
                "repeats": self.repeats}


def time_calls(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return Timing.of(seconds)


def ratio_of_medians(numerator: list[float], denominator: list[float]) -> dict:
    """Median of the per-round ratios and ratio of the medians (they agree on a quiet
    machine; the first is robust to a round that was slow for everyone)."""
    rounds = [a / b for a, b in zip(numerator, denominator, strict=True)]
    return {"median_of_round_ratios": statistics.median(rounds),
            "ratio_of_medians": statistics.median(numerator) / statistics.median(denominator)}


_MMAP_THRESHOLD_OPTION = -3  # glibc's M_MMAP_THRESHOLD


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def track_large_allocations() -> bool:
    """Make resident memory follow what is alive (glibc): every allocation of 256 KiB or more
    becomes its own mapping, returned to the system when freed, and free memory kept in the
    heap is handed back now.

    By default glibc raises that threshold as large blocks are freed and then serves them from
    its heap, where they stay resident: a peak measured afterwards would be blind to them. The
    setting also changes how fast allocation is, so measure peaks after timings. Returns
    whether it took effect (False off glibc).
    """
    libc = _libc()
    if libc is None or not libc.mallopt(_MMAP_THRESHOLD_OPTION, 256 << 10):
        return False
    libc.malloc_trim(0)
    return True


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_memory_supported() -> bool:
    """Whether this system lets a process reset and read its peak resident memory (Linux)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def peak_extra_bytes(fn: Callable[[], object]) -> tuple[object, int | None]:
    """Run ``fn`` once; return its result and how far the process's resident memory rose above
    its level at the start (bytes), or ``None`` where the system cannot tell.

    Uses Linux's resettable high-water mark (``/proc/self/clear_refs``, ``VmHWM``), so it counts
    every allocation, torch's, numpy's and Python's alike.
    """
    gc.collect()
    if not (track_large_allocations() and peak_memory_supported()):
        return fn(), None
    before = _status_kib("VmRSS")
    result = fn()
    peak = _status_kib("VmHWM")
    return result, max(0, peak - before) * 1024


def gemm_flops_per_second(size: int = 2048, repeats: int = 5) -> float:
    """This CPU's float32 matrix-multiply rate: ``2 size^3`` FLOPs per square product."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    timing = time_calls(lambda: torch.mm(a, b, out=out), repeats)
    return 2 * size**3 / timing.median


def write_bytes_per_second(nbytes: int = 256 << 20, repeats: int = 5) -> tuple[float, float]:
    """Memory-write rate ``(into memory already touched, into fresh memory)`` in bytes/s.

    The second includes the operating system's cost of handing out new pages, which every
    freshly allocated large tensor pays on first write.
    """
    touched = torch.zeros(nbytes // 4)
    warm = time_calls(lambda: touched.fill_(1.0), repeats)
    fresh = time_calls(lambda: torch.empty(nbytes // 4).fill_(1.0), repeats)
    return nbytes / warm.median, nbytes / fresh.median
