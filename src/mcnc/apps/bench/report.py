"""The markdown view of ``mcnc bench`` results."""

from __future__ import annotations


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _mib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.1f}"


def _ratio(case: dict) -> str:
    r = case.get("time_vs_reference")
    return "1 (reference)" if r is None else f"{r['median_of_round_ratios']:.3f}"


def _reconstruction(cases: list[dict]) -> list[str]:
    lines = ["## Reconstruction: weights rebuilt per second", "",
             "| workload | method | trained | weights | FLOPs/weight | weights/s | "
             "time vs MCNC | bound (GEMM, write) | of bound | peak extra MiB / output MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        bound = c.get("bound")
        bound_text = (f"{_si(bound['bound'])} ({_si(bound['by_gemm'])}, "
                      f"{_si(bound['by_write'])})" if bound else "")
        of_bound = f"{100 * c['fraction_of_bound']:.0f}%" if bound else ""
        flops = c.get("generation_flops_per_weight")
        lines.append(
            f"| {c['workload']} | {c['variant']} | {c.get('trained', ''):,} | "
            f"{int(c['units']):,} | {'' if flops is None else f'{flops:,.0f}'} | "
            f"{_si(c['weights_per_s'])} | {_ratio(c)} | {bound_text} | {of_bound} | "
            f"{_mib(c['peak_extra_bytes'])} / {4 * c['units'] / 2**20:.1f} |")
    notes = [f"- {c['workload']}, {c['variant']}: {c['note']}" for c in cases if c.get("note")]
    return lines + (["", *notes] if notes else [])


def _timed(cases: list[dict], title: str, cached: bool = False) -> list[str]:
    """A table of timed cases; with ``cached``, a column of the MiB that the adapters' cached
    factors hold (``cached_factor_bytes``)."""
    extra = " cached factors MiB |" if cached else ""
    lines = [title, "",
             "| workload | variant | trained | batch | median time | time vs reference | "
             "throughput | peak extra MiB |" + extra, "|---|---|---|---|---|---|---|---|"
             + ("---|" if cached else "")]
    for c in cases:
        unit = c["unit"]
        trained = c.get("trained")
        memory = c.get("cached_factor_bytes")
        lines.append(
            f"| {c['workload']} | {c['variant']} | "
            f"{'' if trained is None else f'{trained:,}'} | {c.get('batch', '')} | "
            f"{1e3 * c['median_s']:.1f} ms | {_ratio(c)} | {_si(c[f'{unit}_per_s'])} {unit}/s | "
            f"{_mib(c['peak_extra_bytes'])} |"
            + (f" {'' if memory is None else _mib(memory)} |" if cached else ""))
    return lines


def _huge_pages_rates(run: dict | None) -> str:
    if run is None:
        return ""
    return (f"; in the child process with huge pages (rows marked [huge pages]): GEMM "
            f"{_si(run['gemm_flops_per_s'], 'FLOP/s')}, write "
            f"{_si(run['write_bytes_per_s'], 'B/s')} into touched and "
            f"{_si(run['fresh_write_bytes_per_s'], 'B/s')} into fresh memory")


def markdown(result: dict) -> str:
    """Tables of every section that ran, with the machine and the measured rates."""
    by_section: dict[str, list[dict]] = {}
    for case in result["cases"]:
        by_section.setdefault(case["section"], []).append(case)
    s = result["settings"]
    lines = ["# mcnc bench", "",
             f"Machine: {result['machine_line']}.",
             f"Command: `mcnc bench{' --quick' if s['quick'] else ''} --rounds {s['rounds']}`; "
             f"PyTorch huge-page allocation {'on' if result['transparent_huge_pages'] else 'off'}"
             " (THP_MEM_ALLOC_ENABLE) in the main process.",
             f"Measured rates: float32 GEMM {_si(result['gemm_flops_per_s'], 'FLOP/s')}; "
             f"memory write {_si(result['write_bytes_per_s'], 'B/s')} into touched memory, "
             f"{_si(result['fresh_write_bytes_per_s'], 'B/s')} into fresh memory"
             + _huge_pages_rates(result.get("huge_pages_run")) + ".",
             "Times are medians over rounds in which the variants of a workload take turns; "
             "ratios are medians of the per-round ratios. Peak extra memory: the rise of "
             "resident memory during one call.", ""]
    if "reconstruction" in by_section:
        lines += [*_reconstruction(by_section["reconstruction"]), ""]
    if "training" in by_section:
        lines += [*_timed(by_section["training"], "## Training: one optimiser step"), ""]
    if "inference" in by_section:
        lines += [*_timed(by_section["inference"], "## Inference: forward passes",
                          cached=True), ""]
    return "\n".join(lines)
