"""The benchmark harness runs end to end, and generation makes no extra copies."""

import json

import pytest
import torch

from mcnc.adapters.config import MCNCAdapterConfig
from mcnc.adapters.sources import AdaptedLayer, FactorLayout, MCNCSource
from mcnc.apps.bench.measure import peak_extra_bytes, peak_memory_supported, ratio_of_medians
from mcnc.apps.bench.reconstruction import generator_bound, llama7b_targets
from mcnc.apps.cli import main


def test_quick_bench_writes_every_section(tmp_path, capsys):
    assert main(["bench", "--quick", "--rounds", "1", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    sections = {c["section"] for c in result["cases"]}
    assert sections == {"reconstruction", "training", "inference"}
    for case in result["cases"]:
        assert case[f"{case['unit']}_per_s"] > 0
        assert (case["time_vs_reference"] is None) == (case["variant"] == case["reference"])
    mcnc_rows = [c for c in result["cases"] if c["section"] == "reconstruction"
                 and c["variant"] == "mcnc"]
    assert all(c["fraction_of_bound"] > 0 for c in mcnc_rows)
    table = (tmp_path / "bench.md").read_text()
    assert "## Reconstruction" in table and "## Training" in table and "## Inference" in table
    assert "mixed batch, 16 adapters" in capsys.readouterr().out
    assert any(c["workload"].endswith("[huge pages]") for c in result["cases"])


def test_llama7b_shapes():
    targets = llama7b_targets()
    assert len(targets) == 32 * 7
    layout = FactorLayout(targets, 16)
    # rank 16: A is 16 x in, B is out x 16, summed over q, k, v, o, gate, up, down
    assert layout.total_a + layout.total_b == 32 * 16 * (4 * 2 * 4096 + 2 * (4096 + 11008)
                                                         + (11008 + 4096))


def test_bound_and_ratios():
    bound = generator_bound(200e9, 40e9, 64)
    assert bound == {"by_gemm": 200e9 / 64, "by_write": 10e9, "bound": 200e9 / 64}
    r = ratio_of_medians([2.0, 4.0, 2.2], [1.0, 1.0, 1.0])
    assert r["median_of_round_ratios"] == pytest.approx(2.2)
    assert r["ratio_of_medians"] == pytest.approx(2.2)


@pytest.mark.skipif(not peak_memory_supported(), reason="needs Linux's resettable peak RSS")
def test_generation_writes_the_factors_without_extra_copies():
    """Chunks are written once by the output product: padding, the chunk view and the split
    into A and B make no copies, so memory rises by about the output and no more."""
    layout = FactorLayout((AdaptedLayer("a", 2048, 1024), AdaptedLayer("b", 1024, 2048)), 2048)
    source = MCNCSource(MCNCAdapterConfig(rank=2048, d=3000), layout)
    output = 4 * (layout.total_a + layout.total_b)
    with torch.no_grad():
        source.factors()  # first call: one-off set-up (the Gram matrix)
        (a, b), peak = peak_extra_bytes(source.factors)
    assert a.numel() + b.numel() == output // 4
    assert output <= peak < 1.25 * output
