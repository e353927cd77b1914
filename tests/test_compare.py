"""mcnc compare: the grid runs once, resumes from runs.jsonl, and writes table and plot."""

import json

import pytest

from mcnc import compare as cmp
from mcnc.classifier_run import TrainSettings


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
    table = cmp.compare("tiny", tmp_path, progress=False, command="mcnc compare --preset tiny")
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
                                                "method": "mcnc", "budget": 10},
                                   "test_accuracy": acc, "stored_numbers": 10,
                                   "file_bytes": 100, "train_seconds": 1.0})
    (row,) = comparison.rows()
    assert row["mean"] == pytest.approx(60.0)
    assert row["std"] == pytest.approx(14.142, abs=1e-3)


def test_unknown_preset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="quick"):
        cmp.compare("nope", tmp_path)
