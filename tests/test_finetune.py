"""mcnc finetune on a tiny LLaMA with SmolLM2's tokenizer: the command, its report, budgets and
torchrun with 2 CPU processes."""

import argparse
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import mcnc
from mcnc.adapters import AdapterModel, MCNCAdapterConfig
from mcnc.adapters.sources import AdaptedLayer, FactorLayout, d_for_budget
from mcnc.apps.finetune import FinetuneSettings, finetune
from mcnc.core.errors import FormatError
from mcnc.llm.models import build_language_model

ARGS = ["--model", "tiny-llama", "--steps", "4", "--batch-size", "4", "--max-length", "48",
        "--rank", "4", "--budget", "120", "--val-batches", "2", "--no-progress"]


def run_cli(*extra: str, torchrun: bool = False) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", "2"] if torchrun else [sys.executable])
    done = subprocess.run([*launcher, "-m", "mcnc", "finetune", *ARGS, *extra], env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_torchrun_two_processes_match_one_process(tmp_path):
    """Two processes under torchrun, with DDP and with the base's blocks sharded (FSDP2 on
    gloo, the adapter replicated), train the adapter one process trains on the whole batch."""
    single = run_cli("--method", "mcnc", "--out", str(tmp_path / "one"))
    dual = run_cli("--method", "mcnc", "--out", str(tmp_path / "two"), torchrun=True)
    sharded = run_cli("--method", "mcnc", "--out", str(tmp_path / "fsdp"), "--fsdp",
                      torchrun=True)
    assert (single["world_size"], dual["world_size"], sharded["world_size"]) == (1, 2, 2)
    assert (sharded["sharded_blocks"], dual["sharded_blocks"]) == (2, 0)  # tiny-llama: 2 blocks
    for run in (dual, sharded):
        assert run["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)
        assert run["val_loss"] == pytest.approx(single["val_loss"], rel=1e-4)
    models = [mcnc.AdapterModel.from_pretrained(build_language_model("tiny-llama")[0],
                                                tmp_path / run / "adapter")
              for run in ("one", "two", "fsdp")]
    tensors = [m.adapters["default"].stored_tensors() for m in models]
    for other in tensors[1:]:
        for name, value in tensors[0].items():
            torch.testing.assert_close(other[name], value, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["mcnc", "mcnc-mixed", "nola", "lora"])
def test_finetune_reports_and_saves(method, tmp_path):
    mixing = "hadamard" if method == "mcnc-mixed" else "none"
    result = finetune(FinetuneSettings(model="tiny-llama", method=method.removesuffix("-mixed"),
                                       mixing=mixing, steps=3, rank=4, budget=120,
                                       max_length=48, val_batches=2, out=str(tmp_path),
                                       progress=False))
    adapter = tmp_path / "adapter"
    needed = ("adapter_config.json", "adapter_model.safetensors")  # README, training.json aside
    assert result["adapter_bytes"] == sum((adapter / name).stat().st_size for name in needed)
    assert {f.name for f in adapter.iterdir()} == {*needed, "README.md", "training.json"}
    for key in ("train_loss", "val_loss", "train_tokens_per_s", "inference_tokens_per_s"):
        assert result[key] > 0
    if method == "lora":
        assert result["generation_flops"] == 0 and result["trainable"] > 1000
    else:
        assert result["generation_flops"] > 0 and result["trainable"] <= 120
    assert len(result["losses"]) == 3
    assert 0 <= result["token_accuracy"] <= 1
    assert result["merge_error"] < 1e-5  # merged and unmerged logits agree
    if sys.platform == "linux":
        assert result["peak_memory_bytes"] > 0
    line = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[-1])
    assert line["val_loss"] == result["val_loss"]


def test_mixing_is_an_mcnc_option():
    with pytest.raises(ValueError, match="--mixing hadamard is an MCNC option; nola"):
        FinetuneSettings(model="tiny-llama", method="nola", mixing="hadamard")


def test_mcnc_options_reach_the_adapter_and_are_checked():
    result = finetune(FinetuneSettings(model="tiny-llama", steps=1, rank=4, budget=240,
                                       max_length=48, val_batches=1, progress=False,
                                       mcnc_options={"depth": 2, "width": 16, "k": 3}))
    assert {k: result["adapter"][k] for k in ("depth", "width", "k")} == {
        "depth": 2, "width": 16, "k": 3}
    assert result["trainable"] <= 240 and result["mcnc_options"]["k"] == 3
    with pytest.raises(ValueError, match=r"mcnc_options \['k'\] are MCNC settings; lora"):
        FinetuneSettings(model="tiny-llama", method="lora", mcnc_options={"k": 3})
    with pytest.raises(ValueError, match=r"mcnc_options \['d'\] cannot be set here"):
        FinetuneSettings(model="tiny-llama", mcnc_options={"d": 100})


def test_beta_gets_its_own_rate_in_finetuning():
    run = finetune(FinetuneSettings(model="tiny-llama", steps=1, rank=4, budget=240, lr=0.1,
                                    beta_lr_scale=0.5, max_length=48, val_batches=1,
                                    progress=False))
    assert run["beta_lr_scale"] == 0.5
    untold = FinetuneSettings(model="tiny-llama")  # the MCNC adapter's defaults, recorded
    assert (untold.mixing, untold.beta_lr_scale) == ("hadamard", 0.3)
    nola = FinetuneSettings(model="tiny-llama", method="nola")
    assert (nola.mixing, nola.beta_lr_scale) == ("none", 1.0)
    with pytest.raises(ValueError, match="--mixing hadamard is an MCNC option; nola"):
        FinetuneSettings(model="tiny-llama", method="nola", mixing="hadamard")
    with pytest.raises(ValueError, match="beta_lr_scale and beta_rate are MCNC options; lora"):
        FinetuneSettings(model="tiny-llama", method="lora", beta_lr_scale=0.5)
    with pytest.raises(ValueError, match="MCNC options; lora"):
        FinetuneSettings(model="tiny-llama", method="lora", beta_rate="absolute")


def test_the_validation_curve_starts_before_training_and_ends_with_the_result():
    result = finetune(FinetuneSettings(model="tiny-llama", steps=4, rank=4, budget=120,
                                       max_length=48, val_batches=1, eval_every=2,
                                       progress=False))
    assert [p["step"] for p in result["curve"]] == [0, 2, 4]
    assert result["curve"][-1]["val_loss"] == result["val_loss"]
    assert result["curve"][0]["val_loss"] != result["val_loss"]


class _Stop(Exception):
    pass


@pytest.mark.parametrize("method", ["mcnc", "unilora"])
def test_a_stopped_run_resumes_from_its_checkpoint_with_the_same_bits(method, tmp_path,
                                                                      monkeypatch):
    """Stopped during step 4 of 6 (the checkpoint after step 2 is the last one written),
    started again: the losses, curve, trained tensors and final loss are those of a run never
    stopped, a run with other settings is refused, and the checkpoint is gone at the end."""
    from mcnc.apps import finetune as module

    settings = {"model": "tiny-llama", "method": method, "steps": 6, "rank": 4, "budget": 120,
                "max_length": 48, "val_batches": 1, "eval_every": 2, "progress": False,
                "lr": 0.05}
    whole = finetune(FinetuneSettings(**settings, out=str(tmp_path / "whole")))
    checkpoint = tmp_path / "state.safetensors"
    resumed_settings = FinetuneSettings(**settings, out=str(tmp_path / "resumed"),
                                        checkpoint=str(checkpoint), checkpoint_every=2)
    original, calls = module.FinetuneRun._accumulate, []

    def stop_in_step_four(run, batch):
        calls.append(1)
        if calls == [1] * 4:
            raise _Stop
        return original(run, batch)

    monkeypatch.setattr(module.FinetuneRun, "_accumulate", stop_in_step_four)
    with pytest.raises(_Stop):
        finetune(resumed_settings)
    assert checkpoint.exists()
    with pytest.raises(ValueError, match=r"another run \(it differs in \['lr'\]\)"):
        finetune(replace(resumed_settings, lr=0.1))
    calls.clear()
    calls.append("not stopping again")
    resumed = finetune(resumed_settings)
    assert len(calls) == 1 + 4  # steps 3 to 6 only
    assert resumed["losses"] == whole["losses"] and resumed["curve"] == whole["curve"]
    assert resumed["val_loss"] == whole["val_loss"]
    for name in ("adapter_model.safetensors",):
        assert (tmp_path / "resumed/adapter" / name).read_bytes() == \
            (tmp_path / "whole/adapter" / name).read_bytes()
    assert not checkpoint.exists()


def test_a_damaged_checkpoint_is_refused_and_kept(tmp_path):
    checkpoint = tmp_path / "state.safetensors"
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(FormatError, match="not a readable mcnc checkpoint"):
        finetune(FinetuneSettings(model="tiny-llama", steps=2, rank=4, budget=120,
                                  max_length=48, val_batches=1, progress=False,
                                  checkpoint=str(checkpoint)))
    assert checkpoint.read_bytes() == b"not a checkpoint"


def test_budget_picks_the_smallest_chunk_size_that_fits():
    layout = FactorLayout(tuple(AdaptedLayer(str(i), o, n) for i, (o, n) in
                                enumerate([(576, 576), (192, 576), (1536, 576)] * 4)), 16)
    config, joint = MCNCAdapterConfig(k=5), MCNCAdapterConfig(k=5, mixing="hadamard-joint")
    for budget in (12, 300, 6000):
        d = d_for_budget(layout, budget, config)

        def cost(d):
            return (-(-layout.total_a // d) - (-layout.total_b // d)) * 6

        assert cost(d) <= budget and (d == 6 or cost(d - 1) > budget)
        d = d_for_budget(layout, budget, joint)  # one region: A and B together

        def joint_cost(d):
            return -(-(layout.total_a + layout.total_b) // d) * 6

        assert joint_cost(d) <= budget and (d == 6 or joint_cost(d - 1) > budget)
    with pytest.raises(ValueError, match="budget"):
        d_for_budget(layout, 11, config)


def test_bad_settings_are_clear(tmp_path):
    with pytest.raises(ValueError, match="gguf-4bit needs --model smollm2-135m"):
        finetune(FinetuneSettings(model="tiny-llama", base="gguf-4bit", progress=False))
    with pytest.raises(ValueError, match="unknown method"):
        finetune(FinetuneSettings(model="tiny-llama", method="prefix", progress=False))


def test_a_nan_loss_stops_finetuning_without_writing_an_adapter(tmp_path, monkeypatch):
    from mcnc.apps import lm_eval as module

    real, calls = module.token_loss_sum, []

    def nan_at_step_2(model, batch):
        loss, n = real(model, batch)
        calls.append(None)
        return (loss * float("nan") if len(calls) == 2 else loss), n

    monkeypatch.setattr(module, "token_loss_sum", nan_at_step_2)
    with pytest.raises(mcnc.DivergedError, match=r"loss became nan at step 2/3, so the run "
                       r"stopped and no adapter was written\. Try a lower learning rate"):
        finetune(FinetuneSettings(model="tiny-llama", steps=3, rank=4, budget=120,
                                  max_length=48, out=str(tmp_path), progress=False))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("method", "budget", "expected"), [
    ("unilora", 120, 120), ("fourierft", 140, 140), ("waveft", 140, 140), ("tinylora", 140, 140),
    ("vblora", 0, None), ("vera", 120, None), ("randlora", 0, None), ("peft-lora", 120, None)])
def test_peft_peers_run_through_peft(method, budget, expected, tmp_path):
    pytest.importorskip("peft")
    result = finetune(FinetuneSettings(model="tiny-llama", method=method, budget=budget,
                                       rank=4, steps=2, batch_size=2, max_length=48,
                                       val_batches=1, lr=1e-2, progress=False,
                                       out=str(tmp_path)))
    assert result["adapter"]["peft_type"] == method.removeprefix("peft-").upper()
    if expected is not None:  # 14 layers: 2 blocks x 7 linear layers
        assert result["trainable"] == expected
    assert result["generation_flops"] is None and result["val_loss"] > 0
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert result["merge_error"] < 1e-5
    lean = result["adapter_bytes_without_projection"]
    if method in ("vera", "tinylora", "randlora"):  # they can leave their projections out
        assert lean < result["adapter_bytes"]
    else:
        assert lean is None


def test_uni_lora_takes_a_rank_and_keeps_its_count():
    """``peer_rank`` sets Uni-LoRA's ``r`` (peft's default is 4); its trained numbers are the
    budget whatever the rank. Other methods refuse it."""
    pytest.importorskip("peft")
    from mcnc.apps.finetune import peer_model

    for rank in (None, 1, 16):
        model = peer_model(FinetuneSettings(model="tiny-llama", method="unilora", budget=120,
                                            peer_rank=rank), build_language_model("tiny-llama")[0])
        config = model.peft_config["default"]
        assert config.r == (4 if rank is None else rank)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 120
    with pytest.raises(ValueError, match="--peer-rank sets Uni-LoRA's rank"):
        FinetuneSettings(method="mcnc", peer_rank=4)


def test_sizing_without_projection_matches_a_randlora_built_without_it_and_restores():
    """RandLoRA reads ``save_projection`` only when it is built: the lean size must come out as
    if it had been built with False, and the model must save its bases again afterwards."""
    peft = pytest.importorskip("peft")
    from mcnc.apps.finetune import _without_projection

    def randlora(save_projection: bool):
        torch.manual_seed(0)
        config = peft.RandLoraConfig(target_modules=["q_proj", "v_proj"],
                                     save_projection=save_projection)
        return peft.get_peft_model(build_language_model("tiny-llama")[0], config), config

    def adapter_keys(model) -> set[str]:
        return set(peft.get_peft_model_state_dict(model))

    model, config = randlora(save_projection=True)
    full = adapter_keys(model)
    with _without_projection(model, config):
        lean = adapter_keys(model)
    assert lean == adapter_keys(randlora(save_projection=False)[0]) and lean < full
    assert adapter_keys(model) == full


BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def _load_benchmark(name: str):
    import importlib.util

    path = BENCHMARKS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_grid_of_the_peer_benchmark_has_a_title_and_verdict_words():
    bench = _load_benchmark("finetune_peers")
    assert set(bench.GRIDS) == set(bench.GRID_TITLES) == set(bench.VERDICTS)
    for words in bench.VERDICTS.values():
        assert set(words) == {"win", "loss", "tie"}


def test_the_peer_benchmark_sweeps_until_the_best_rate_is_inside():
    bench = _load_benchmark("finetune_peers")
    cell = bench.Cell("mcnc @ 6,000", {"method": "mcnc", "budget": 6000})
    losses = {0.03: 2.5, 0.1: 2.4, 0.3: 2.3, 1.0: 2.2, 3.0: 2.6}  # best at 1.0
    done: dict[str, dict] = {}

    def finish(runs):
        for lr, seed in runs:
            done[bench.run_key(cell, lr, seed, 300)] = {"val_loss": losses[lr] + seed / 100}

    assert bench.next_runs(cell, done, 300, 2) == [(0.3, 0), (0.1, 0), (1.0, 0)]  # start first
    finish([(0.1, 0), (0.3, 0), (1.0, 0)])
    assert bench.next_runs(cell, done, 300, 2) == [(3.0, 0)]  # 1.0 was the top rung tried
    finish([(3.0, 0)])
    assert bench.next_runs(cell, done, 300, 2) == [(1.0, 1)]  # inside: the second seed
    finish([(1.0, 1)])
    assert bench.next_runs(cell, done, 300, 2) == []
    done[bench.run_key(cell, 3.0, 0, 300)] = {"diverged": True}  # a diverged rung is worst
    assert bench.next_runs(cell, done, 300, 2) == []
    assert bench.best_rates(done, 300, "peers") == {"mcnc @ 6,000": 1.0}
    # at another length with the rate fixed: no sweep, only the seeds at that rate
    assert bench.next_runs(cell, done, 900, 2, rate=1.0) == [(1.0, 0), (1.0, 1)]
    done[bench.run_key(cell, 1.0, 0, 900)] = {"val_loss": 2.1}
    assert bench.next_runs(cell, done, 900, 2, rate=1.0) == [(1.0, 1)]
    mixed = next(c for c in bench.cells() if c.label == "mcnc-mixed @ 6,000")
    assert mixed.settings == {"method": "mcnc", "budget": 6000, "mixing": "hadamard",
                              "beta_rate": "absolute", "beta_lr_scale": 1.0}  # before 0.3
    plain = next(c for c in bench.cells() if c.label == "mcnc @ 6,000")
    assert plain.settings["mixing"] == "none"  # not today's default: the table stays whole


def test_the_peer_table_counts_every_seed_recorded_at_the_best_rate():
    bench = _load_benchmark("finetune_peers")
    cell = next(c for c in bench.cells() if c.label == "nola @ 6,000")  # starts at 0.1
    losses = {(0.03, 0): 2.5, (0.1, 0): 2.3, (0.3, 0): 2.4, (0.1, 1): 2.2, (0.1, 2): 2.1,
              (0.3, 1): 9.0}  # a stray seed at another rate is not the best rate's
    done = {bench.run_key(cell, lr, seed, 300): {"val_loss": v, "seed": seed}
            for (lr, seed), v in losses.items()}
    args = argparse.Namespace(steps=300, seeds=2, rates={}, grid="peers", score="final")
    (row,) = bench.cell_rows(done, args)
    assert row["lr"] == 0.1 and row["finished"]
    assert [r["val_loss"] for r in row["records"]] == [2.3, 2.2, 2.1]  # a third seed counts


def test_the_peer_benchmark_queues_earlier_cells_first_and_the_base_model_last():
    bench = _load_benchmark("finetune_peers")
    chosen = [c for c in bench.cells() if c.label in ("nola @ 6,000", "mcnc @ 26,880")]
    args = argparse.Namespace(steps=300, seeds=2, rates_from=None, rates={}, model="tiny-llama",
                              eval_every=60, score="final", interleave=False)
    keys = [key for key, _ in bench.pending(chosen, {}, args)]
    nola = [bench.run_key(chosen[0], lr, 0, 300) for lr in (0.1, 0.03, 0.3)]
    mcnc = [bench.run_key(chosen[1], lr, 0, 300) for lr in (0.3, 0.1, 1.0)]
    base = bench.run_key(bench.BASE, bench.LADDER[0], 0, 0)
    assert keys == [*nola, *mcnc, base]
    interleaved = bench.pending(chosen, {}, argparse.Namespace(**{**vars(args),
                                                                   "interleave": True}))
    assert [key for key, _ in interleaved] == [nola[0], mcnc[0], nola[1], mcnc[1], nola[2],
                                               mcnc[2], base]
    settings = dict(bench.pending(chosen, {}, args))[keys[0]]
    assert settings == {"method": "nola", "budget": 6000, "model": "tiny-llama", "lr": 0.1,
                        "seed": 0, "steps": 300, "eval_every": 60}


def test_the_peer_table_names_the_model_and_its_command():
    bench = _load_benchmark("finetune_peers")
    args = argparse.Namespace(steps=4, seeds=1, rates_from=None, rates={}, model="tiny-llama",
                              eval_every=2, out="/tmp/try", jobs=1, cells=".", grid="peers",
                              score="final")
    text = bench.table({}, args)
    assert text.startswith("# A tiny random Llama (a trial of the benchmark, not a result)")
    assert "--model tiny-llama" in text
    smollm2 = bench.table({}, argparse.Namespace(**{**vars(args), "model": "smollm2-135m"}))
    assert smollm2.startswith("# SmolLM2-135M-Instruct:") and "--model" not in smollm2


def test_the_held_in_grid_changes_one_setting_per_candidate_from_the_default():
    bench = _load_benchmark("finetune_peers")
    held_in = {c.label: c.settings for c in bench.cells("adapter-held-in")}
    old = {"beta_rate": "absolute", "mixing": "none", "beta_lr_scale": 1.0}  # before 0.3
    assert held_in["mcnc @ 6,000"] == {"method": "mcnc", "budget": 6000, **old}
    assert held_in["mcnc r4 @ 26,880"] == {"method": "mcnc", "budget": 26880, "rank": 4, **old}
    assert held_in["mcnc gen-vision @ 6,000"]["mcnc_options"] == {
        "depth": 2, "width": 64, "hidden_gain": 8.0}
    args = argparse.Namespace(steps=300, seeds=1, rates_from=None, rates={}, model="tiny-llama",
                              eval_every=2, out="/tmp/try", jobs=1, cells=".",
                              grid="adapter-held-in", score="final")
    assert "--grid adapter-held-in" in bench.table({}, args)


def test_second_round_candidates_are_compared_with_the_adopted_default():
    bench = _load_benchmark("finetune_peers")
    grid = {c.label: c for c in bench.cells("beta-rate")}
    old, adopted = grid["mcnc @ 26,880"], grid["mcnc-mixed beta x0.3 @ 26,880"]
    candidate = grid["mcnc-mixed beta x0.3 b-start @ 26,880"]
    assert candidate.versus == "mcnc-mixed beta x0.3" and adopted.versus == "mcnc"
    losses = {old: (2.40, 2.42), adopted: (2.30, 2.31), candidate: (2.20, 2.21)}
    done = {bench.run_key(cell, 0.3, seed, 300): {"val_loss": loss, "seed": seed}
            for cell, pair in losses.items() for seed, loss in enumerate(pair)}
    args = argparse.Namespace(steps=300, seeds=2, rates={}, grid="beta-rate", score="final",
                              rates_from=None)
    rows = {r["cell"].label: r for r in bench.cell_rows(done, args)}
    verdict = bench._versus_mcnc(rows[candidate.label], list(rows.values()), "beta-rate")
    assert verdict.startswith("-0.1000") and "better than the default" in verdict  # not -0.205


def test_alphas_near_the_cube_centre_start_the_chunks_in_nearly_one_direction():
    bench = _load_benchmark("chunk_directions")
    assert bench.mean_abs_cosine(torch.eye(3)) == 0.0
    assert bench.mean_abs_cosine(torch.tensor([[1.0, 2.0], [-2.0, -4.0]])) == pytest.approx(1.0)
    model = AdapterModel(build_language_model("tiny-llama")[0])
    config = MCNCAdapterConfig(d=64)
    layout = FactorLayout(model.select_targets(config), config.rank)
    whole = bench.mean_abs_cosine(bench.initial_directions(layout, config))
    centre = bench.mean_abs_cosine(bench.initial_directions(
        layout, replace(config, alpha_init_scale=0.1)))
    assert whole < 0.5 < centre


def test_the_fair_grid_ranks_runs_by_their_best_evaluation():
    bench = _load_benchmark("finetune_peers")
    fair = {c.label: c for c in bench.cells("fair")}
    mcnc, unilora = fair["mcnc @ 6,000"], fair["unilora r4 @ 6,000"]
    assert unilora.settings == {"method": "unilora", "budget": 6000, "peer_rank": 4}
    assert unilora.start == 0.1  # Uni-LoRA's best at 300 steps
    assert mcnc.start == fair["mcnc r4 @ 26,880"].start == 0.1  # MCNC's best at 900 steps
    assert mcnc.settings["mixing"] == "hadamard" and mcnc.settings["beta_lr_scale"] == 0.3

    def run(final, lowest, seed=0):  # a curve whose best evaluation is not its last
        return {"val_loss": final, "seed": seed, "trainable": 6000, "token_accuracy": 0.5,
                "train_loss": final + 0.1 * seed,
                "adapter_bytes": 25_000, "train_tokens_per_s": 100.0, "merge_error": 0.0,
                "curve": [{"step": 50, "val_loss": lowest + 0.1},
                          {"step": 100, "val_loss": lowest}, {"step": 150, "val_loss": final}]}

    done = {bench.run_key(unilora, 0.03, 0, 900): run(2.20, 2.19),
            bench.run_key(unilora, 0.1, 0, 900): run(2.40, 2.10),  # overfits, best early
            bench.run_key(unilora, 0.3, 0, 900): run(2.50, 2.30)}
    assert bench.next_runs(unilora, done, 900, 2, score="final") == [(0.01, 0)]
    assert bench.next_runs(unilora, done, 900, 2, score="best-eval") == [(0.1, 1)]
    for seed in (0, 1):
        done[bench.run_key(mcnc, 0.3, seed, 900)] = run(2.3, 2.3 - seed / 100, seed)
    for lr in (0.1, 1.0):
        done[bench.run_key(mcnc, lr, 0, 900)] = run(2.5, 2.5)
    done[bench.run_key(unilora, 0.1, 1, 900)] = run(2.40, 2.12, seed=1)
    args = argparse.Namespace(steps=900, seeds=2, rates={}, grid="fair", score="best-eval",
                              rates_from=None, model="smollm2-135m", eval_every=50,
                              out="/tmp/try", jobs=2, cells=".")
    rows = {r["cell"].label: r for r in bench.cell_rows(done, args)}
    assert rows["unilora r4 @ 6,000"]["lr"] == 0.1
    verdict = bench._versus_mcnc(rows["unilora r4 @ 6,000"], list(rows.values()), "fair",
                                 "best-eval")
    assert verdict.startswith("-0.1850") and "MCNC loses" in verdict  # 2.11 vs 2.295
    text = bench.table(done, args)
    assert "by the lowest validation loss of its evaluations" in text
    # training losses seed by seed: Uni-LoRA 2.40 / 2.50 against MCNC's 2.30 / 2.40
    assert bench._train_gap(rows["unilora r4 @ 6,000"], list(rows.values())) == "+0.1000 (2)"
    assert "Validation loss along training" not in text  # curves of one step of the five
    assert "--grid fair" in text and "--score" not in text  # best-eval is the grid's own
    sweep = bench.sweep_table(done, args)
    assert "rung with the lowest best evaluation" in sweep
    assert "| unilora r4 @ 6,000 | 0.1 | 2.4000 | 2.1000 (step 100) | 50.00 |" in sweep


def test_the_fair_table_follows_validation_loss_along_training():
    bench = _load_benchmark("finetune_peers")
    cell = next(c for c in bench.cells("fair") if c.label == "mcnc @ 6,000")

    def record(shift):
        return {"curve": [{"step": s, "val_loss": 3.0 - s / 1000 + shift}
                          for s in range(0, 901, 50)]}

    rows = [{"cell": cell, "records": [record(0.0), record(0.1)]}]
    lines = bench.curve_table(rows)
    assert lines[-1] == "| mcnc @ 6,000 | 2.9500 | 2.7500 | 2.5500 | 2.3500 | 2.1500 |"
    other = next(c for c in bench.cells("fair") if c.label == "unilora r4 @ 6,000")
    rows.append({"cell": other, "records": [record(-0.1)]})
    rows[0]["records"][1]["curve"].pop()  # one seed lacks step 900: no mean there
    assert bench.curve_table(rows)[-2].endswith("| 2.3500 | - |")
    rows.pop()  # no row reaches step 900: its column goes
    assert bench.curve_table(rows)[-1].endswith("| 2.5500 | 2.3500 |")


def test_the_peer_benchmark_refuses_fewer_than_one_thread(tmp_path):
    script = BENCHMARKS / "finetune_peers.py"
    done = subprocess.run([sys.executable, str(script), "--threads", "0", "--report-only",
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "--threads 0: give 1 or more" in done.stderr


def test_a_second_peer_benchmark_on_the_same_folder_is_refused(tmp_path):
    bench = _load_benchmark("finetune_peers")
    with bench.hold_folder(tmp_path), pytest.raises(RuntimeError,
                                                     match=r"already running on .*--out"):
        bench.hold_folder(tmp_path)
    bench.hold_folder(tmp_path).close()  # free again once the first one ends


def test_without_fcntl_the_peer_benchmark_warns_that_its_folder_is_unlocked(tmp_path,
                                                                            monkeypatch):
    bench = _load_benchmark("finetune_peers")
    monkeypatch.setattr(bench, "fcntl", None)
    with pytest.warns(UserWarning, match="not locked"):
        bench.hold_folder(tmp_path).close()


def _save_small_model(kind: str, folder: Path) -> None:
    """A small random causal LM of architecture ``kind`` with the SmolLM2 tokenizer, saved as
    a Hugging Face folder (no download)."""
    import transformers

    from mcnc.llm.models import load_smollm2_tokenizer

    tokenizer = load_smollm2_tokenizer()
    vocab, shape = len(tokenizer), {"num_hidden_layers": 2, "num_attention_heads": 4}
    configs = {
        "llama": transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48,
                                          num_key_value_heads=2, **shape),
        "gpt2": transformers.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4,
                                        n_positions=256),
        "qwen2": transformers.Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=48,
                                          num_key_value_heads=2, **shape),
    }
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(configs[kind]).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "qwen2"])
def test_finetune_takes_a_local_hugging_face_folder(kind, tmp_path):
    _save_small_model(kind, tmp_path / "model")
    result = finetune(FinetuneSettings(model=str(tmp_path / "model"), steps=2, rank=4,
                                       budget=240, max_length=48, val_batches=1,
                                       out=str(tmp_path / "run"), progress=False))
    assert 0 < result["trainable"] <= 240 and math.isfinite(result["val_loss"])
    base, _ = build_language_model(str(tmp_path / "model"))
    served = mcnc.AdapterModel.from_pretrained(base, tmp_path / "run" / "adapter")
    expected = 8 if kind == "gpt2" else 14  # GPT-2: c_attn, c_proj, c_fc, mlp.c_proj per block
    assert len(served.adapters["default"].layout.targets) == expected


def test_a_model_path_that_is_no_model_is_refused_clearly(tmp_path):
    from mcnc.data.errors import DataNotFoundError

    with pytest.raises(DataNotFoundError, match="neither a Hugging Face model folder"):
        build_language_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(DataNotFoundError, match="has no tokenizer"):
        build_language_model(str(tmp_path))


def test_the_default_adapter_rates_are_the_best_of_the_committed_sweep():
    """ADAPTER_LR holds, per method, the best rate that results/finetune-peers found at the
    default budget (6,000) and length (300 steps); VeRA and RandLoRA at their defaults, LoRA
    at rank 1."""
    from mcnc.apps.rates import ADAPTER_LR, ADAPTER_STEPS

    table = (BENCHMARKS.parent / "results" / "finetune-peers" / "table.md").read_text()
    best = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 4 and cells[3][:1].isdigit():
            best[cells[1]] = float(cells[3].split()[0])
    cells = {"mcnc": "mcnc @ 6,000", "nola": "nola @ 6,000", "lora": "lora r1",
             "fourierft": "fourierft @ 6,000", "unilora": "unilora @ 6,000",
             "tinylora": "tinylora @ 6,000", "vblora": "vblora @ 6,000",
             "vera": "vera default", "randlora": "randlora default", "peft-lora": "lora r1"}
    assert {method: best[cell] for method, cell in cells.items()} == ADAPTER_LR
    assert "300 steps" in table and ADAPTER_STEPS == 300 == FinetuneSettings().steps
    assert FinetuneSettings(method="unilora").learning_rate == 0.1


def _adapter_after(tmp_path, name, **settings) -> dict[str, torch.Tensor]:
    finetune(FinetuneSettings(model="tiny-llama", steps=3, rank=4, budget=240, max_length=48,
                              val_batches=1, out=str(tmp_path / name), progress=False,
                              **settings))
    import safetensors.torch

    return safetensors.torch.load_file(tmp_path / name / "adapter" / "adapter_model.safetensors")


def test_gradient_accumulation_trains_the_same_adapter(tmp_path, monkeypatch):
    from mcnc.apps import lm_eval as module

    real, calls = module.token_loss_sum, []

    def counted(model, batch):
        calls.append(len(batch["input_ids"]))
        return real(model, batch)

    monkeypatch.setattr(module, "token_loss_sum", counted)
    whole = _adapter_after(tmp_path, "whole")
    assert calls == [4, 4, 4]
    parts = _adapter_after(tmp_path, "parts", grad_accumulation=2)
    assert calls[3:] == [2] * 6  # three steps of two micro-batches
    assert whole.keys() == parts.keys()
    for name in whole:
        torch.testing.assert_close(parts[name], whole[name], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="cannot be cut into 3 equal micro-batches"):
        finetune(FinetuneSettings(model="tiny-llama", grad_accumulation=3, progress=False))


def test_a_bfloat16_base_trains_a_float32_adapter(tmp_path, monkeypatch):
    import mcnc.llm.models as models

    real, bases = models.build_language_model, []

    def recorded(*args, **kwargs):
        model, tokenizer = real(*args, **kwargs)
        bases.append(next(model.parameters()).dtype)
        return model, tokenizer

    monkeypatch.setattr(models, "build_language_model", recorded)
    result = finetune(FinetuneSettings(model="tiny-llama", steps=2, rank=4, budget=240,
                                       max_length=48, val_batches=1, dtype="bfloat16",
                                       out=str(tmp_path), progress=False))
    assert math.isfinite(result["val_loss"]) and bases == [torch.bfloat16]
    import safetensors.torch

    stored = safetensors.torch.load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float32}
    with pytest.raises(ValueError, match="--dtype float8: choose one of"):
        FinetuneSettings(dtype="float8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_asking_for_cuda_without_one_is_a_clear_error():
    with pytest.raises(ValueError, match="--device cuda: torch sees no CUDA device"):
        finetune(FinetuneSettings(model="tiny-llama", device="cuda", progress=False))


def test_a_finetuned_folder_says_what_it_is_generates_and_exports_to_peft(tmp_path, capsys):
    from mcnc.apps.cli import main

    finetune(FinetuneSettings(model="tiny-llama", steps=1, rank=4, budget=240, max_length=48,
                              val_batches=1, out=str(tmp_path / "run"),
                              export_lora=str(tmp_path / "lora"), progress=False))
    folder = tmp_path / "run" / "adapter"
    info = json.loads((folder / "training.json").read_text())
    assert info["base_model"] == "tiny-llama" and info["budget"] == 240
    assert math.isfinite(info["val_loss"]) and "val_loss" in (folder / "README.md").read_text()
    prompt = ["generate", "--adapter", str(folder), "--max-new-tokens", "5", "Hello"]
    assert main(prompt) == 0 and main(prompt) == 0
    first, second = capsys.readouterr().out.splitlines()[-2:]
    assert first == second  # greedy: the same text twice (a random model may say nothing)
    assert main([*prompt, "--temperature", "0.8", "--seed", "3"]) == 0
    peft_config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert peft_config["peft_type"] == "LORA" and peft_config["r"] == 4
    with pytest.raises(ValueError, match="drop --export-lora"):
        FinetuneSettings(method="unilora", export_lora=str(tmp_path / "x"))


def _stopped_after_a_checkpoint(settings: FinetuneSettings, monkeypatch) -> None:
    """Run ``settings`` until it has written its first checkpoint, then stop it."""
    from mcnc.apps import finetune as module

    original = module.FinetuneRun._accumulate

    def stop_in_the_second_step(run, batch):
        if Path(settings.checkpoint).exists():
            raise _Stop
        return original(run, batch)

    with monkeypatch.context() as patch:
        patch.setattr(module.FinetuneRun, "_accumulate", stop_in_the_second_step)
        with pytest.raises(_Stop):
            finetune(settings)


def test_peer_benchmark_runs_keep_a_checkpoint_while_they_train(tmp_path, monkeypatch):
    bench = _load_benchmark("finetune_peers")
    path = bench.checkpoint_path(tmp_path, "mcnc @ 6,000|lr=0.1|seed=0|steps=900")
    assert path.parent == tmp_path / "checkpoints"
    assert path.name.startswith("mcnc_6_000_lr=0.1_seed=0_steps=900-")
    assert bench.checkpoint_path(tmp_path, "a b") != bench.checkpoint_path(tmp_path, "a,b")
    settings = {"model": "tiny-llama", "steps": 2, "rank": 4, "budget": 120, "max_length": 48,
                "val_batches": 1}
    stale = FinetuneSettings(**settings, lr=0.5, checkpoint=str(path), checkpoint_every=1,
                             progress=False)
    _stopped_after_a_checkpoint(stale, monkeypatch)
    assert path.exists()  # a checkpoint of another version of the cell: started over
    record = bench._run_in_worker(settings, 1, path)
    assert record["val_loss"] > 0 and record["lr"] != 0.5
    assert not path.exists() and path.parent.is_dir()


def test_a_diverged_run_removes_its_checkpoint(tmp_path, monkeypatch):
    """Resuming would only diverge again; the checkpoint's folder is made when the run
    starts, not when the first checkpoint is due."""
    from mcnc.apps import finetune as module
    from mcnc.core.errors import DivergedError

    path = tmp_path / "new folder" / "state.safetensors"
    original = module.FinetuneRun._accumulate

    def nan_after_a_checkpoint(run, batch):
        loss = original(run, batch)
        return math.nan if path.exists() else loss

    monkeypatch.setattr(module.FinetuneRun, "_accumulate", nan_after_a_checkpoint)
    with pytest.raises(DivergedError):
        finetune(FinetuneSettings(model="tiny-llama", steps=4, rank=4, budget=120, max_length=48,
                                  val_batches=1, progress=False, checkpoint=str(path),
                                  checkpoint_every=1))
    assert not path.exists() and path.parent.is_dir()
