"""The benchmark harness runs end to end, and generation makes no extra copies."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mcnc.adapters import AdapterModel
from mcnc.adapters.config import ALL_LINEAR, MCNCAdapterConfig
from mcnc.adapters.sources import AdaptedLayer, FactorLayout, MCNCSource
from mcnc.adapters.targets import select_targets
from mcnc.apps.bench.inference import _distinct_adapters, adapter_counts
from mcnc.apps.bench.measure import peak_extra_bytes, peak_memory_supported, ratio_of_medians
from mcnc.apps.bench.peers_rebuild import (
    MCNC_DELTAS,
    PEER_REBUILDS,
    attach_peer,
    check_first_delta,
    consume,
    mcnc_deltas,
    peer_deltas,
    peer_layers,
    shape_only_model,
)
from mcnc.apps.bench.reconstruction import generator_bound, llama7b_targets
from mcnc.apps.bench.run import BenchSettings, Workloads, run_bench
from mcnc.apps.bench.step_time import PEER_TRAINING
from mcnc.apps.cli import main
from mcnc.llm.models import build_language_model


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
    assert "mixed batch, 8 adapters" in capsys.readouterr().out
    assert any(c["workload"].endswith("[huge pages]") for c in result["cases"])
    _check_peer_rows(result["cases"])
    _check_stage_rows(result["cases"])


def _check_stage_rows(cases: list[dict]) -> None:
    """MCNC's generator, mixing and rest, timed apart beside its whole rebuild and step."""
    for section, suffix, workloads in (("reconstruction", "", {"resnet20"}),
                                       ("training", " fwd+bwd", {"mlp (MNIST shapes)",
                                                                 "resnet20 (CIFAR shapes)"})):
        for workload in workloads:
            stages = {c["stage"]: c for c in cases if c["section"] == section
                      and c["workload"] == workload and "stage" in c}
            assert set(stages) == {"generator", "mixing", "rest"}
            assert all(c["variant"] == f"mcnc: {name}{suffix}" for name, c in stages.items())
    generator = next(c for c in cases if c.get("stage") == "generator"
                     and c["section"] == "reconstruction" and c["workload"] == "resnet20")
    assert generator["generation_flops_per_weight"] > 0  # its bound; the others have none
    assert not any("generation_flops_per_weight" in c for c in cases
                   if c.get("stage") in ("mixing", "rest"))


def _check_peer_rows(cases: list[dict]) -> None:
    """The quick bench's peer rows: every full-delta workload (both allocations) has MCNC's
    B @ A and each peer, counting the delta entries of every adapted layer; the training
    section has a step of each peer."""
    shaped = 2 * (4 * 256 * 256 + 3 * 688 * 256)  # 2 blocks of q, k, v, o, gate, up, down
    tiny = sum(t.out_features * t.in_features for t in select_targets(
        build_language_model("tiny-llama")[0], ALL_LINEAR))
    expected = {"llama-shaped adapters, full deltas": shaped,
                "tiny-llama adapters, full deltas": tiny}
    expected |= {f"{w} [huge pages]": n for w, n in expected.items()}
    for workload, entries in expected.items():
        rows = {c["variant"]: c for c in cases if c["workload"] == workload}
        assert set(rows) == {MCNC_DELTAS, *PEER_REBUILDS}, workload
        for variant, row in rows.items():
            assert row["section"] == "reconstruction" and row["unit"] == "weights"
            assert row["units"] == entries and row["weights_per_s"] > 0
            assert row["trained"] > 0 and "delta entries" in row["note"]
            assert row["reference"] == MCNC_DELTAS
            assert (row.get("generation_flops_per_weight") is None) == (variant == "fourierft")
        assert rows["unilora"]["trained"] == rows[MCNC_DELTAS]["trained"]
    scaled = next(c for c in cases if c["workload"] == "llama-shaped adapters, full deltas"
                  and c["variant"] == "fourierft")
    assert "first 7 of the 14 layers" in scaled["note"]
    training = {c["variant"]: c for c in cases if c["workload"] == "tiny-llama + adapter"}
    assert set(PEER_TRAINING) <= set(training)
    for method in PEER_TRAINING:
        assert training[method]["tokens_per_s"] > 0 and training[method]["trained"] > 0
        assert training[method]["reference"] == "lora"


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
@pytest.mark.parametrize(("mixing", "bound"), [("none", 1.25), ("hadamard", 3.0)])
def test_generation_writes_the_factors_without_extra_copies(mixing, bound):
    """Unmixed, chunks are written once by the output product: padding, the chunk view and the
    split into A and B make no copies, so memory rises by about the output and no more. Mixed,
    the generated chunks, one region's padded scratch and the output are alive at once."""
    layout = FactorLayout((AdaptedLayer("a", 2048, 1024), AdaptedLayer("b", 1024, 2048)), 2048)
    source = MCNCSource(MCNCAdapterConfig(rank=2048, d=3000, mixing=mixing), layout)
    output = 4 * (layout.total_a + layout.total_b)
    with torch.no_grad():
        source.factors()  # first call: one-off set-up (the Gram matrix)
        (a, b), peak = peak_extra_bytes(source.factors)
    assert a.numel() + b.numel() == output // 4
    assert output <= peak < bound * output


def test_adapter_counts_go_up_to_one_adapter_per_row():
    assert adapter_counts(256) == (1, 4, 16, 64, 256)
    assert adapter_counts(8) == (1, 4, 8)
    assert adapter_counts(1) == (1,)


def test_quick_serving_rows_report_cached_factor_memory():
    """Every count of adapters at one batch, with positive rates; each row's cached-factor
    memory is the bytes of that many adapters' cached factor tensors, taken here from the cache
    of a model built the same way after a mixed batch (and 4 * rank * sum(in + out) each)."""
    settings = BenchSettings(quick=True, sections=("inference",), rounds=1, out=None,
                             progress=False)
    result = run_bench(settings)
    w = Workloads.for_settings(settings)
    batch, length = w.serve_batch
    counts = adapter_counts(batch)
    rows = {c["variant"]: c for c in result["cases"] if c["section"] == "inference"}
    assert set(rows) == {"merged", "1 adapter, unmerged", "mixed batch, 1 adapter",
                         *(f"mixed batch, {n} adapters" for n in counts[1:])}
    assert all(c["tokens_per_s"] > 0 and c["batch"] == f"{batch} x {length} tokens"
               for c in rows.values())
    generation = [c for c in result["cases"] if c["variant"] == f"mcnc x{counts[-1]}"]
    assert len(generation) == 1 and generation[0]["weights_per_s"] > 0

    model = AdapterModel(build_language_model(w.llm)[0]).eval()
    names = _distinct_adapters(model, counts[-1], 16)
    ids = torch.zeros(batch, length, dtype=torch.long)
    with torch.no_grad():
        model(input_ids=ids, adapter_names=[names[i % len(names)] for i in range(batch)])
    cache = model.state._cache
    layout = model.adapters[names[0]].layout
    per_adapter = 4 * layout.rank * sum(t.in_features + t.out_features for t in layout.targets)
    for count in counts:
        cached = sum(A.nbytes + B.nbytes for n in names[:count]
                     for A, B in cache[n][2].values())
        assert cached == count * per_adapter
        variant = "mixed batch, 1 adapter" if count == 1 else f"mixed batch, {count} adapters"
        assert rows[variant]["cached_factor_bytes"] == cached
        assert rows[variant]["distinct_adapters"] == count
    assert rows["1 adapter, unmerged"]["cached_factor_bytes"] == per_adapter


def _small_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2))


@pytest.mark.parametrize("method", PEER_REBUILDS)
def test_timed_peer_delta_is_what_peft_merges(method):
    """The deltas the bench times are peft's own: merging the adapter moves every base weight
    by exactly that delta."""
    base = _small_llama()
    targets = select_targets(base, ALL_LINEAR)
    model = attach_peer(method, base, targets, budget=100)
    before = {t.name: base.get_submodule(t.name).base_layer.weight.detach().clone()
              for t in targets}
    layers = peer_layers(model)
    with torch.no_grad():
        deltas = dict(peer_deltas(layers))
    assert list(deltas) == [t.name for t in targets]
    assert consume(lambda: peer_deltas(layers))() == sum(
        t.out_features * t.in_features for t in targets)
    model.base_model.merge_adapter()
    for t in targets:
        delta = deltas[t.name]
        assert delta.shape == (t.out_features, t.in_features) and delta.any()
        merged = base.get_submodule(t.name).base_layer.weight.detach()
        torch.testing.assert_close(merged - before[t.name], delta, rtol=1e-5, atol=1e-6)


def test_timed_mcnc_delta_is_what_the_adapter_merges():
    model = AdapterModel(_small_llama())
    source = model.add_adapter("mcnc", MCNCAdapterConfig(rank=4, d=500, scaling=2.0))
    with torch.no_grad():
        source.beta.normal_(0, 0.1)
        deltas = dict(mcnc_deltas(source))
        for name, delta in deltas.items():
            expected = model._adapted_layer(name).delta_weight("mcnc")
            assert delta.any()
            torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-7)
    assert list(deltas) == [t.name for t in model.select_targets(MCNCAdapterConfig())]


@pytest.mark.parametrize("method", ["unilora", "vera"])
def test_peers_adapt_7b_shapes_without_base_weights(method):
    """One 7B LLaMA block: the base layers are a broadcast zero (4 bytes in all), the adapter
    is real and its deltas have the layers' full shapes."""
    targets = llama7b_targets(blocks=1)
    base = shape_only_model(targets)
    weights = [base.get_submodule(t.name).weight for t in targets]
    assert all(w.stride() == (0, 0) for w in weights)
    assert {w.untyped_storage().data_ptr() for w in weights} == {weights[0].data_ptr()}
    assert weights[0].untyped_storage().nbytes() == 4
    model = attach_peer(method, base, targets, budget=47_976)
    check_first_delta(peer_deltas(peer_layers(model)), targets)  # finite, non-zero, 4096^2
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trained == (47_976 if method == "unilora" else sum(t.out_features + 1
                                                             for t in targets))
