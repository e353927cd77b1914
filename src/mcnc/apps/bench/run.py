"""``mcnc bench``: reconstruction, training and inference speed and peak memory, measured in one
run on this machine, written as JSON and a markdown table.

Timings are medians over alternating rounds (the variants of a workload take turns); ratios
are medians of the per-round ratios. Training and inference run first, with the memory
allocator as users have it. Reconstructions run next, with every large allocation a fresh
mapping (:func:`~mcnc.apps.bench.measure.track_large_allocations`), as a first allocation always is:
each rebuilt weight lands in new memory. Their bound is the GEMM rate over the FLOPs per weight
or the memory-write rate, whichever is lower; writing into fresh memory is slower than that
(the system maps every page on first touch), which is why they run a second time with PyTorch's
huge-page allocation, in a child process. Peak memory comes last, one call per case, as the
rise of the process's resident memory above its level before the call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from mcnc.apps.bench.cases import Case, Measured, measure_group, measure_peaks
from mcnc.apps.bench.measure import (
    gemm_flops_per_second,
    track_large_allocations,
    write_bytes_per_second,
)
from mcnc.apps.bench.report import markdown
from mcnc.apps.machine import machine_info, machine_line

SECTIONS = ("reconstruction", "training", "inference")
HUGE_PAGES_SWITCH = "THP_MEM_ALLOC_ENABLE"


@dataclass
class BenchSettings:
    """What ``mcnc bench`` runs."""

    quick: bool = False
    """Small stand-ins for every workload (a smoke test of the harness; seconds, not minutes)."""
    sections: tuple[str, ...] = SECTIONS
    rounds: int = 5
    """Alternating rounds per workload (each round times every variant)."""
    huge_pages: bool = True
    """Also time the reconstructions in a child process with PyTorch's huge-page allocation
    (``THP_MEM_ALLOC_ENABLE=1``), which makes writing into fresh memory several times faster."""
    out: str | None = "results/bench"
    progress: bool = True


@dataclass(frozen=True)
class Workloads:
    """Sizes of the workloads: the real ones, or small stand-ins with ``quick``."""

    resnet_budget: int
    adapter_blocks: int
    adapter_hidden: int
    adapter_intermediate: int
    classifier_batch: int
    llm: str
    llm_budget: int
    train_batch: tuple[int, int]
    serve_batch: tuple[int, int]
    """Rows and tokens per row of the serving batch; it holds as many distinct adapters as
    rows at most (see :mod:`mcnc.apps.bench.inference`)."""

    @classmethod
    def for_settings(cls, s: BenchSettings) -> Workloads:
        if s.quick:
            return cls(2_000, 2, 256, 688, 8, "tiny-llama", 200, (2, 16), (8, 8))
        return cls(10_000, 32, 4096, 11008, 128, "smollm2-135m", 6_000, (4, 128), (256, 4))


def _reconstruction_groups(w: Workloads, folder: Path, quick: bool,
                           load_llm) -> list[list[Case]]:
    from mcnc.apps.bench.peers_rebuild import (
        FOURIERFT_TIMED_BLOCKS,
        model_delta_cases,
        shape_only_cases,
    )
    from mcnc.apps.bench.reconstruction import adapter_cases, llama7b_targets, model_cases
    from mcnc.models import resnet20, resnet56

    name, build = ("resnet20", resnet20) if quick else ("resnet56", resnet56)
    warm, cold = model_cases(name, build, w.resnet_budget, folder)
    targets = llama7b_targets(w.adapter_blocks, w.adapter_hidden, w.adapter_intermediate)
    label = "llama-shaped adapters" if quick else "llama7b adapters"
    per_block = len(targets) // w.adapter_blocks
    fourierft_blocks = 1 if quick else FOURIERFT_TIMED_BLOCKS
    return [warm, cold, adapter_cases(targets, label, pranc_columns=8 if quick else 256),
            shape_only_cases(f"{label}, full deltas", targets,
                             fourierft_targets=fourierft_blocks * per_block),
            model_delta_cases(f"{w.llm} adapters, full deltas", load_llm(), w.llm_budget)]


def _training_groups(w: Workloads, load_llm) -> list[list[Case]]:
    from mcnc.apps.bench.step_time import adapter_training_cases, classifier_cases
    from mcnc.models import mlp, resnet20

    b = w.classifier_batch
    return [classifier_cases("mlp (MNIST shapes)", mlp, 2_000, b, (1, 28, 28)),
            classifier_cases("resnet20 (CIFAR shapes)", resnet20, 5_000, b, (3, 32, 32)),
            adapter_training_cases(f"{w.llm} + adapter", load_llm(), w.llm_budget,
                                   *w.train_batch)]


def _inference_groups(w: Workloads, load_llm) -> list[list[Case]]:
    from mcnc.apps.bench.inference import inference_cases

    cases, generation = inference_cases(w.llm, load_llm(), *w.serve_batch)
    return [cases, [generation]]


def run_bench(s: BenchSettings) -> dict:
    """Measure the chosen sections; returns (and with ``out`` writes) the results."""
    from mcnc.llm.models import build_language_model

    unknown = set(s.sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    w = Workloads.for_settings(s)
    gemm = gemm_flops_per_second()

    def load_llm():
        return build_language_model(w.llm)[0]

    # The huge-page reconstructions first, in a child process, while this one holds nothing
    # yet: later it holds every group's models at once (256 served adapters among them).
    huge_pages_run = (_reconstruction_with_huge_pages(s) if "reconstruction" in s.sections
                      and s.huge_pages and not _huge_pages_on() else None)
    measured: list[Measured] = []
    with tempfile.TemporaryDirectory() as tmp:
        groups = []
        if "training" in s.sections:
            groups += _training_groups(w, load_llm)
        if "inference" in s.sections:
            groups += _inference_groups(w, load_llm)
        rebuilds = _reconstruction_groups(w, Path(tmp), s.quick, load_llm) if (
            "reconstruction" in s.sections) else []
        bar = tqdm(total=len(groups) + len(rebuilds), desc="bench", disable=not s.progress)
        for group in groups:
            measured += measure_group(group, s.rounds)
            bar.update()
        # Reconstructions write large fresh tensors: time them with every large allocation a
        # fresh mapping, as a first allocation always is (glibc otherwise switches between
        # reusing its heap and mapping anew as it goes, and the timings with it).
        track_large_allocations()
        write_warm, write_fresh = write_bytes_per_second()
        for group in rebuilds:
            measured = measure_group(group, s.rounds) + measured
            bar.update()
        bar.close()
        measure_peaks(measured)
    result = {
        "settings": asdict(s), "workloads": asdict(w), "machine": machine_info(),
        "machine_line": machine_line(),
        "transparent_huge_pages": _huge_pages_on(),
        "gemm_flops_per_s": gemm, "write_bytes_per_s": write_warm,
        "fresh_write_bytes_per_s": write_fresh,
        "cases": [m.to_dict() for m in measured],
    }
    _add_bounds(result)
    if huge_pages_run is not None:
        result["huge_pages_run"] = huge_pages_run
        result["cases"] = huge_pages_run.pop("cases") + result["cases"]
    if s.out:
        out = Path(s.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / "bench.md").write_text(markdown(result))
    return result


def _huge_pages_on() -> bool:
    return os.environ.get(HUGE_PAGES_SWITCH, "0") not in ("", "0")


def _reconstruction_with_huge_pages(s: BenchSettings) -> dict:
    """The reconstruction section again, in a child process whose PyTorch allocates large
    tensors on transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``, read once at start-up)."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "mcnc", "bench", "--only", "reconstruction",
                   "--rounds", str(s.rounds), "--out", tmp, "--no-progress",
                   *(["--quick"] if s.quick else [])]
        subprocess.run(command, env={**os.environ, HUGE_PAGES_SWITCH: "1"}, check=True,
                       stdout=subprocess.DEVNULL)
        child = json.loads((Path(tmp) / "bench.json").read_text())
    for case in child["cases"]:
        case["workload"] += " [huge pages]"
    return {key: child[key] for key in ("gemm_flops_per_s", "write_bytes_per_s",
                                        "fresh_write_bytes_per_s", "cases")}


def _add_bounds(result: dict) -> None:
    """Beside every reconstruction: the bound of its FLOPs per weight on this machine."""
    from mcnc.apps.bench.reconstruction import generator_bound

    for case in result["cases"]:
        flops = case.get("generation_flops_per_weight")
        if case["section"] == "reconstruction" and flops:
            bound = generator_bound(result["gemm_flops_per_s"], result["write_bytes_per_s"],
                                    flops)
            case["bound"] = bound
            case["fraction_of_bound"] = case["weights_per_s"] / bound["bound"]
