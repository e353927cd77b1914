"""mcnc compare: the grid runs once, resumes from runs.jsonl, and writes table and plot."""

import json
import warnings
from dataclasses import asdict, replace

import pytest
import torch

from mcnc.apps import compare as cmp
from mcnc.apps.classifier_run import TrainSettings
from mcnc.apps.comparison_report import machines_line


@pytest.fixture
def tiny_preset(monkeypatch):
    small = dict(model="mlp", dataset="mnist", epochs=1, batch_size=128, train_subset=256,
                 test_subset=128, progress=False)
    preset = cmp.Preset("tiny", "two methods on 256 MNIST images", (
        TrainSettings(method="dense", **small),
        TrainSettings(method="mcnc", budget=500, **small),
        TrainSettings(method="pranc", budget=500, **small)))
    monkeypatch.setitem(cmp.PRESETS, "tiny", preset)
    return preset


def test_compare_writes_table_plot_and_resumes(tiny_preset, tmp_path, monkeypatch):
    table = cmp.compare("tiny", tmp_path, progress=False, command="mcnc compare --preset tiny",
                        jobs=2)
    text = table.read_text()
    assert "| mcnc | 500 |" in text and "| pranc | 500 |" in text and "| dense | - |" in text
    assert "mcnc compare --preset tiny" in text and "Machine:" in text
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 6  # 3 settings x 2 seeds
    assert {r["seed"] for r in runs} == {0, 1}

    def no_training(settings):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(cmp, "train", no_training)
    again = cmp.compare("tiny", tmp_path, progress=False, command="mcnc compare --preset tiny")
    assert again.read_text() == text


def test_rows_give_mean_and_std_over_seeds():
    preset = cmp.Preset("x", "", ())
    comparison = cmp.Comparison(preset, out=None)
    for acc in (0.5, 0.7):
        comparison.results.append({"settings": {"dataset": "mnist", "model": "mlp",
                                                "method": "mcnc", "budget": 10, "lr": 0.1},
                                   "test_accuracy": acc, "stored_numbers": 10,
                                   "file_bytes": 100, "train_seconds": 1.0,
                                   "train_loss": 0.1})
    (row,) = comparison.rows()
    assert row["mean"] == pytest.approx(60.0)
    assert row["std"] == pytest.approx(14.142, abs=1e-3)
    assert row["lr"] == 0.1 and row["fell"] == 0


def test_unknown_preset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="quick"):
        cmp.compare("nope", tmp_path)


def _row(label, mean, std, seeds=3, budget=1000):
    return {"dataset": "mnist", "model": "mlp", "label": label, "budget": budget,
            "mean": mean, "std": std, "seeds": seeds}


@pytest.mark.parametrize(("mean", "verdict"), [(91.0, "win"), (89.0, "loss"), (90.3, "tie")])
def test_win_only_beyond_twice_the_standard_error(mean, verdict):
    from mcnc.apps.comparison_report import versus_subspace

    rows = [_row("nola", 90.0, 0.3), _row("pranc", 85.0, 0.3), _row("mcnc", mean, 0.3)]
    text = versus_subspace(rows[2], rows)
    assert f"**{verdict}**" in text and "vs nola" in text  # the better subspace
    assert versus_subspace(_row("mcnc", 95.0, 0.0, seeds=1), rows).endswith("(1 seed: no test)")


def test_scoreboard_counts_each_cells_verdict_against_its_best_rival():
    from mcnc.apps.comparison_report import is_subspace, scoreboard

    rows = [_row("nola", 90.0, 0.3), _row("pranc", 85.0, 0.3), _row("mcnc", 91.0, 0.3),
            _row("nola", 95.0, 0.3, budget=3000), _row("mcnc", 94.0, 0.3, budget=3000),
            _row("nola", 80.0, 0.3, budget=300), _row("mcnc", 80.1, 0.3, budget=300),
            _row("mcnc", 99.0, 0.3, budget=10_000),  # no rival there: not counted
            _row("pruning", 97.0, 0.1, seeds=1, budget=3000),
            {**_row("dense", 98.0, 0.1), "budget": None}]
    assert scoreboard(rows, is_subspace) == [
        "- mcnc: 1 wins, 1 ties, 1 losses",
        "- pruning: 0 wins, 0 ties, 0 losses, 1 with one seed (untested)"]


def test_glance_has_a_line_per_cell_a_column_per_method_and_bolds_the_best():
    from mcnc.apps.comparison_report import glance

    rows = [_row("mcnc", 91.0, 0.3), _row("nola", 90.0, 0.25),
            {**_row("mcnc", 40.5, 50.0, budget=10_000), "failed": 2},
            {**_row("nola", 10.3, 0.9, budget=10_000), "failed": 3},
            {**_row("mcnc", 60.0, 40.0, budget=3_000), "failed": 1},
            {**_row("nola", 59.0, 0.2, budget=3_000)},
            {**_row("dense", 98.0, 0.1), "budget": None}]
    assert glance(rows) == [
        "| data set, model | budget | mcnc | nola | dense |",
        "|---|---:|---:|---:|---:|",
        "| mnist, mlp | 1,000 | **91.00 ± 0.30 (3)** | 90.00 ± 0.25 (3) | 98.00 ± 0.10 (3) |",
        "| mnist, mlp | 10,000 | 40.50 ± 50.00 (3 ‡) | 10.30 ± 0.90 (3 ‡) | 98.00 ± 0.10 (3) |",
        "| mnist, mlp | 3,000 | 60.00 ± 40.00 (3 ‡) | **59.00 ± 0.20 (3)** | 98.00 ± 0.10 (3) |"]
    assert glance(rows[:1] + rows[-1:])[2].count("**") == 0  # alone: no bold
    assert glance([rows[-1]]) == []


def test_a_run_that_fell_apart_or_ends_at_chance_has_failed():
    from mcnc.apps.comparison_report import failed

    def history(*pairs):
        return [{"test_accuracy": a, "train_loss": loss} for a, loss in pairs]

    fell_apart = history((0.55, 0.7), (0.91, 0.4), (0.10, 2.3), (0.11, 2.3))
    assert failed(fell_apart) and failed(fell_apart, classes=10)
    never_learned = history((0.10, 4.7), (0.10, 2.31), (0.10, 2.302))
    assert failed(never_learned, classes=10)
    assert not failed(never_learned)  # classes unknown: only the fall is seen
    assert not failed(history((0.5, 1.0), (0.8, 0.5), (0.79, 0.5)), classes=10)
    assert not failed([])


def test_a_sweep_picks_the_best_rate_below_the_first_that_fell_to_chance():
    from mcnc.apps.comparison_report import fell_to_chance, picked_rates, stable_best

    assert fell_to_chance([{"test_accuracy": 0.098}, {"test_accuracy": 0.98}], classes=10)
    assert not fell_to_chance([{"test_accuracy": 0.21}], classes=10)
    assert not fell_to_chance([{"test_accuracy": 0.0}], classes=None)

    def rung(lr, mean, fell=0):
        return {**_row(f"mcnc lr={lr:g}", mean, 0.0, seeds=1), "lr": lr, "fell": fell}

    # 1.0 recovered to the best accuracy after falling to chance: too close to the edge
    sweep = [rung(0.03, 97.6), rung(0.1, 98.1), rung(0.3, 11.3, fell=1), rung(1.0, 98.2, fell=1)]
    assert stable_best(sweep)["lr"] == 0.1
    assert stable_best([rung(0.1, 90.0, fell=1)]) is None
    assert picked_rates(sweep) == [
        "- mnist, mlp, mcnc: **0.1** (98.10 %; fell to chance at 0.3, 1)"]
    assert picked_rates(sweep[:2]) == [
        "- mnist, mlp, mcnc: **0.1** (98.10 %; at the edge of the rates tried)"]


def test_converged_rates_are_the_picks_of_the_committed_sweep():
    """``CONVERGED_LR`` is what ``stable_best`` picks from results/converged-lr (committed)."""
    from pathlib import Path

    from mcnc.apps.comparison_report import stable_best
    from mcnc.apps.presets import CONVERGED_LR

    sweep = cmp.Comparison(cmp.PRESETS["converged-lr"],
                           Path(__file__).parents[1] / "results" / "converged-lr")
    sweep.run(progress=False, train=False)
    by_pair: dict[tuple, list[dict]] = {}
    for row in sweep.rows():
        by_pair.setdefault((row["model"], row["label"].split(" lr=")[0]), []).append(row)
    assert set(CONVERGED_LR) <= set(by_pair)
    assert {pair: stable_best(by_pair[pair])["lr"] for pair in CONVERGED_LR} == CONVERGED_LR


def test_late_change_is_the_gain_over_the_last_fifth():
    from mcnc.apps.comparison_report import late_change

    history = [{"test_accuracy": a} for a in (0.5, 0.8, 0.9, 0.91, 0.915)]
    assert late_change(history) == pytest.approx(0.5)  # 0.91 -> 0.915 over the last 1 of 5
    assert late_change(history[:1]) is None


def test_flatness_line_counts_rows_that_still_moved():
    from mcnc.apps.comparison_report import flatness_line

    rows = [{"late": 0.1}, {"late": -0.35}, {"late": None}, {"late": 0.29}]
    assert flatness_line(rows).startswith("Flat by the 0.3-point rule: 2 of 3 rows; the 1 ")
    assert flatness_line(rows[:1]) == "Flat by the 0.3-point rule: all 1 rows.  "
    assert flatness_line([{"late": None}]) == ""


def test_curves_and_table_columns(tiny_preset, tmp_path):
    table = cmp.compare("tiny", tmp_path, progress=False)
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    header = next(line for line in table.read_text().splitlines() if line.startswith("| method"))
    assert "late" in header and "vs subspace" in header and "train loss" in header
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert all(len(r["history"]) == 1 and "train_loss" in r["history"][0] for r in runs)


def test_converged_presets_describe_their_grid():
    from mcnc.apps.presets import PRANC_MAX_BASIS, PRESETS, SELECTED_WEIGHTS
    from mcnc.baselines import PRANCConfig
    from mcnc.core.layout import plan_layout
    from mcnc.models import build_model

    for model, weights in SELECTED_WEIGHTS.items():
        layout = plan_layout(build_model(model, 1, 28, 10), PRANCConfig(coefficients=1))
        assert layout.total == weights
    runs = PRESETS["converged"].runs
    assert all(SELECTED_WEIGHTS[s.model] * s.budget <= PRANC_MAX_BASIS
               for s in runs if s.method == "pranc")
    assert {s.budget for s in runs if s.method == "mcnc"} == {300, 1_000, 3_000, 10_000}
    assert PRESETS["converged"].seeds == (0, 1, 2)
    sweep = PRESETS["converged-lr"].runs
    assert {s.dense_lr for s in sweep if s.method == "dense" and s.model != "resnet20"} == {
        1e-4, 3e-4, 1e-3, 3e-3, 1e-2}
    assert {s.dense_lr for s in sweep if s.method == "dense" and s.model == "resnet20"} == {
        1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2}
    assert {s.lr for s in sweep if s.method == "mcnc"} == {0.01, 0.03, 0.1, 0.3, 1.0}


def test_report_only_writes_a_partial_table(tiny_preset, tmp_path, monkeypatch):
    def no_training(settings):
        raise AssertionError("--report-only trained a run")

    monkeypatch.setattr(cmp, "train", no_training)
    (tmp_path / "runs.jsonl").write_text("")
    table = cmp.compare("tiny", tmp_path, progress=False, train=False).read_text()
    assert "Partial: 0 of 6 runs finished" in table


def test_a_failing_run_does_not_stop_the_others(tmp_path, monkeypatch):
    small = dict(model="mlp", dataset="mnist", epochs=1, train_subset=256, test_subset=128,
                 progress=False)
    preset = cmp.Preset("failing", "", (TrainSettings(method="nola", budget=1, **small),
                                        TrainSettings(method="mcnc", budget=500, **small)),
                        seeds=(0,))
    monkeypatch.setitem(cmp.PRESETS, "failing", preset)
    with pytest.raises(RuntimeError, match=r"1 run\(s\) failed.*nola budget=1"):
        cmp.compare("failing", tmp_path, progress=False, jobs=2)
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [r["method"] for r in runs] == ["mcnc"]


def test_jobs_on_one_gpu_warn_that_the_runs_take_turns(monkeypatch):
    class NoPool:
        def __init__(self, *args, **kwargs):
            raise InterruptedError("stop before training")

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(cmp, "process_pool", NoPool)
    runs = [TrainSettings(seed=s) for s in (0, 1)]
    with pytest.warns(UserWarning, match="--jobs 2 puts 2 training processes on one GPU"), \
            pytest.raises(InterruptedError):
        list(cmp._train_all(runs, jobs=2))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InterruptedError):
            list(cmp._train_all(runs, jobs=2))


def test_records_keep_the_settings_they_ran_at():
    """A record written before ``hidden_gain`` was a setting ran at gain 4, not today's 8; the
    generator's settings do not identify a run of a method without a generator."""
    from mcnc.apps.methods import MethodSettings

    old = {k: v for k, v in asdict(MethodSettings()).items() if k != "hidden_gain"}
    run = TrainSettings(model="mlp", dataset="mnist", method="mcnc", budget=300)
    record = {**asdict(run), "method_settings": old}
    assert cmp._key(record) == cmp._key(asdict(
        TrainSettings(**{**asdict(run), "method_settings": MethodSettings(hidden_gain=4.0)})))
    assert cmp._key(record) != cmp._key(asdict(run))
    nola = TrainSettings(model="mlp", dataset="mnist", method="nola", budget=300)
    assert cmp._key({**asdict(nola), "method_settings": old}) == cmp._key(asdict(nola))


def test_held_in_gain_is_the_default_and_old_presets_keep_gain_4():
    import mcnc
    from mcnc.apps.methods import MethodSettings
    from mcnc.apps.presets import PRESETS

    assert MethodSettings().hidden_gain == mcnc.MCNCConfig().hidden_gain == 8.0
    for name in ("quick", "lr", "held-in", "ablation-L"):
        gains = {s.method_settings.hidden_gain for s in PRESETS[name].runs}
        assert gains == ({4.0, 8.0} if name == "held-in" else {4.0}), name
    assert {s.method_settings.hidden_gain for s in PRESETS["converged"].runs} == {8.0}
    held_in = PRESETS["held-in"]
    labels = {cmp.row_label(asdict(s), "variant", asdict(held_in.reference))
              for s in held_in.runs}
    assert "mcnc reference" in labels and "mcnc hidden_gain=8.0" in labels


def test_lowrank_rank_32_is_the_default_and_its_measurements_keep_64():
    """results/lowrank-rank made 32 MCNC w/ LoRA's rank; NOLA keeps 64, and the presets
    measured at 64 keep it, so their records still match their runs."""
    import mcnc
    from mcnc.apps.methods import MethodSettings
    from mcnc.apps.presets import PRESETS

    assert MethodSettings().rank == mcnc.MCNCConfig().rank == 32
    assert MethodSettings().nola_rank == 64

    def lowrank_ranks(name):
        return {s.method_settings.rank for s in PRESETS[name].runs if s.method == "mcnc-lowrank"}
    assert lowrank_ranks("converged") == {32}
    assert lowrank_ranks("converged-lr") == {32} and lowrank_ranks("quick") == {64}
    assert lowrank_ranks("lowrank-rank") == {4, 8, 16, 32, 64}
    nola = TrainSettings(model="mlp", dataset="mnist", method="nola", budget=300)
    old = {k: v for k, v in asdict(MethodSettings()).items() if k != "nola_rank"}
    recorded = {**asdict(nola), "method_settings": {**old, "rank": 64}}
    assert cmp._key(recorded) == cmp._key(asdict(nola))
    lowrank = replace(nola, method="mcnc-lowrank")
    assert cmp._key({**recorded, "method": "mcnc-lowrank"}) != cmp._key(asdict(lowrank))


def test_hadamard_mixing_is_the_default_and_records_before_it_ran_unmixed():
    import mcnc
    from mcnc.apps.methods import MethodSettings
    from mcnc.apps.presets import PRESETS

    assert MethodSettings().mixing == mcnc.MCNCConfig().mixing == "hadamard"
    assert {s.method_settings.mixing for s in PRESETS["converged"].runs} == {"hadamard"}
    assert {s.method_settings.mixing for s in PRESETS["held-in"].runs} == {"none"}
    assert {s.method_settings.mixing for s in PRESETS["held-in-2"].runs} == {"none", "hadamard"}
    run = TrainSettings(model="mlp", dataset="mnist", method="mcnc", budget=300)
    before = {k: v for k, v in asdict(MethodSettings()).items() if k != "mixing"}
    record = {**asdict(run), "method_settings": before}
    assert cmp._key(record) == cmp._key(asdict(replace(
        run, method_settings=MethodSettings(mixing="none"))))


def test_records_before_the_relative_beta_rate_ran_at_the_absolute_one():
    """A record without ``beta_rate`` ran with one rate for alpha and beta; the presets measured
    then keep that rate, and the rate does not identify a run of a method without a beta."""
    from mcnc.apps.presets import PRESETS

    run = TrainSettings(model="lenet5", dataset="mnist", method="mcnc", budget=10_000)
    record = {k: v for k, v in asdict(run).items() if k != "beta_rate"}
    assert run.beta_rate == "relative"
    assert cmp._key(record) == cmp._key(asdict(replace(run, beta_rate="absolute")))
    assert cmp._key(record) != cmp._key(asdict(run))
    nola = TrainSettings(model="lenet5", dataset="mnist", method="nola", budget=10_000)
    assert cmp._key({k: v for k, v in asdict(nola).items() if k != "beta_rate"}) == cmp._key(
        asdict(nola))
    assert {s.beta_rate for s in PRESETS["converged"].runs if s.method == "mcnc"} == {"absolute"}
    rerun = PRESETS["converged-beta-rate"].runs
    assert len(rerun) == 8 and {s.beta_rate for s in rerun} == {"relative"}


@pytest.mark.parametrize("name", ["quick", "lr", "ablation-kd", "ablation-L", "ablation-m",
                                  "ablation-activation", "held-in", "held-in-2",
                                  "lowrank-rank"])
def test_finished_presets_still_match_their_committed_records(name):
    """A change of defaults or rates must not detach a committed table from its command:
    every run of a finished preset still finds its record in results/<name>/runs.jsonl."""
    from pathlib import Path

    from mcnc.apps.presets import PRESETS

    log = Path(__file__).parents[1] / "results" / name / "runs.jsonl"
    keys = {cmp._key(json.loads(line)["settings"]) for line in log.read_text().splitlines()}
    preset = PRESETS[name]
    missing = [s for s in preset.runs for seed in preset.seeds
               if cmp._key(asdict(replace(s, seed=seed))) not in keys]
    assert not missing, f"{len(missing)} runs of {name} have no record, e.g. {missing[0]}"


def test_machine_line_names_every_machine_the_runs_used():
    assert machines_line({"cpu A": 3}) == "Machine: cpu A  "
    two = machines_line({"cpu A": 3, "cpu B, NVIDIA H200": 2, "cpu C": 1})
    assert two.startswith("Machines: ") and "cpu A (3 runs)" in two
    assert "cpu B, NVIDIA H200 (2 runs)" in two and "cpu C (1 run)" in two
    assert "no runs yet" in machines_line({})
