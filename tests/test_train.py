"""mcnc train: every method end to end, checkpoint and resume, and torchrun with 2 processes."""

import json
import os
import subprocess
import sys

import pytest
import torch

import mcnc
from mcnc.apps.classifier_run import Run, TrainSettings, _deterministic, train
from mcnc.apps.distributed import Context
from mcnc.apps.methods import METHOD_NAMES, build_method
from mcnc.models import build_model

SMALL = dict(model="mlp", dataset="mnist", epochs=2, batch_size=64, train_subset=512,
             test_subset=256, progress=False)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_trains_saves_and_reports_the_same_way(method, tmp_path):
    budget = {"dense": None, "lora": 8_000}.get(method, 2_000)  # lora: rank 5
    lr = 1e-2 if method == "lora" else None  # factors from scratch learn slowly at 1e-3
    result = train(TrainSettings(method=method, budget=budget, out=str(tmp_path), lr=lr,
                                 **SMALL))
    assert result["test_accuracy"] > 0.3  # 10 classes: chance is 0.1
    if method == "dense":
        assert (tmp_path / "model.safetensors").exists()
        assert result["method_numbers"] == 203_530
        return
    assert result["method_numbers"] <= budget
    assert result["method_numbers"] >= (budget // 2 if method == "lora" else 0.9 * budget)
    path = tmp_path / "model.mcnc"
    assert result["file_bytes"] == path.stat().st_size
    loaded = mcnc.load(path, build_model("mlp", 1, 28, 10))
    assert loaded.method == method.removesuffix("-lowrank")
    logged = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[-1])
    assert logged["test_accuracy"] == result["test_accuracy"]


@pytest.mark.parametrize("method", ["mcnc", "pruning"])
def test_resume_after_an_interruption_gives_the_same_run(method, tmp_path, monkeypatch):
    settings = TrainSettings(method=method, budget=2_000, **{**SMALL, "epochs": 3})
    straight = train(settings)

    calls = {"n": 0}
    original = Run.train_epoch

    def crash_on_third_epoch(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self)

    out = tmp_path / "run"
    monkeypatch.setattr(Run, "train_epoch", crash_on_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(TrainSettings(**{**settings.__dict__, "out": str(out)}))
    monkeypatch.setattr(Run, "train_epoch", original)
    resumed = train(TrainSettings(**{**settings.__dict__, "out": str(out), "resume": True}))
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="other settings"):
        train(TrainSettings(**{**settings.__dict__, "out": str(out), "resume": True,
                               "lr": 0.123}))


def test_budget_errors_are_clear():
    with pytest.raises(ValueError, match="--budget"):
        Run(TrainSettings(method="pranc", **SMALL), Context())
    with pytest.raises(ValueError, match="rank-1 LoRA"):
        build_method("lora", build_model("mlp", 1, 28, 10), 10)


def test_torchrun_two_processes_match_one_process(tmp_path):
    args = ["--model", "mlp", "--method", "mcnc", "--budget", "1000", "--epochs", "1",
            "--batch-size", "64", "--train-subset", "1024", "--test-subset", "512",
            "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "mcnc", "train", *args], env=env,
                         capture_output=True, text=True, timeout=1800)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "mcnc", "train", *args,
                          "--out", str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=1800)
    assert two.returncode == 0, two.stderr
    single = json.loads(one.stdout.strip().splitlines()[-1])
    dual = json.loads(two.stdout.strip().splitlines()[-1])
    assert dual["world_size"] == 2 and single["world_size"] == 1
    assert dual["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)
    assert abs(dual["test_accuracy"] - single["test_accuracy"]) <= 2 / 512
    loaded = mcnc.load(tmp_path / "model.mcnc", build_model("mlp", 1, 28, 10))
    assert loaded.alpha.shape[0] * 17 <= 1000


def test_batch_norm_recalibration_uses_the_exact_average_of_the_batches():
    from torch import nn

    from mcnc.apps.classifier_run import recalibrate_batch_norm

    model = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False), nn.BatchNorm2d(3)).eval()
    model[1].running_mean.fill_(100.0)
    batches = [(torch.randn(4, 1, 5, 5) + i, None) for i in range(3)]
    assert recalibrate_batch_norm(model, batches, torch.device("cpu"))
    with torch.no_grad():
        expected = torch.stack([model[0](x).mean(dim=(0, 2, 3)) for x, _ in batches]).mean(0)
    assert torch.allclose(model[1].running_mean, expected, atol=1e-5)
    assert model[1].momentum == 0.1 and not model.training
    assert not recalibrate_batch_norm(nn.Linear(2, 2), batches, torch.device("cpu"))


def test_deterministic_mode_is_on_only_during_the_run():
    assert not torch.are_deterministic_algorithms_enabled()
    with _deterministic(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark
    assert not torch.are_deterministic_algorithms_enabled()
    with _deterministic(False):
        assert not torch.are_deterministic_algorithms_enabled()
