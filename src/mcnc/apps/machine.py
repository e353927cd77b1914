"""A description of the machine a measurement ran on, for results files."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU model, cores visible, torch threads, OS, Python and torch versions."""
    return {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def machine_line() -> str:
    m = machine_info()
    gpu = f", {m['cuda']}" if m["cuda"] else ""
    return (f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads){gpu}, "
            f"{m['os']}, Python {m['python']}, torch {m['torch']}")


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement on ``device`` (see :func:`peak_memory`)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: 5 resets the peak resident set (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory(device: torch.device) -> tuple[int | None, str]:
    """Peak memory since :func:`reset_peak_memory`, in bytes, and what was measured: on CUDA
    the bytes torch allocated on the device; on a CPU the process's peak resident set size
    (everything: model, activations, Python), where Linux reports it; else ``None``."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "CUDA memory allocated"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024, "process peak resident set"
    except OSError:
        pass
    return None, "not measured on this system"
