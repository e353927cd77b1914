"""Crashes and numerical faults: SIGKILL while a file is saved, SIGKILL in the middle of an
``mcnc train`` epoch followed by ``--resume``, and a NaN loss."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import mcnc
from mcnc.apps.checkpoint import read_checkpoint, restore, save_checkpoint
from mcnc.apps.cli import main

TESTS = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic in every process


# -- a process killed while it saves ---------------------------------------------------------
def _models() -> tuple[mcnc.MCNCModel, nn.Linear]:
    """A compressed model whose .mcnc file is about 4.5 MB, and a module whose checkpoint is
    about 4 MB (both the same in every process)."""
    torch.manual_seed(0)
    compressed = mcnc.compress(nn.Linear(1024, 1024), mcnc.MCNCConfig(k=16, d=17))
    return compressed, nn.Linear(1024, 1024)


def _write_version(version: int, compressed: mcnc.MCNCModel, plain: nn.Linear, folder: Path
                   ) -> None:
    """Odd versions go to model.mcnc, even ones to checkpoint.safetensors; every value of the
    version's file tells the version."""
    with torch.no_grad():
        if version % 2:
            compressed.beta.fill_(version)
            mcnc.save(compressed, folder / "model.mcnc")
        else:
            plain.weight.fill_(version)
            plain.bias.fill_(version)
            optimizer = torch.optim.Adam(plain.parameters())
            save_checkpoint(folder / "checkpoint.safetensors", plain, optimizer, None,
                            {"version": version})


def save_forever(folder: str) -> None:
    """The child process: save versions 1, 2, 3, ... until killed, announcing each."""
    compressed, plain = _models()
    version = 1
    while True:
        print(f"start {version}", flush=True)
        _write_version(version, compressed, plain, Path(folder))
        version += 1


def _version(folder: Path, name: str) -> int:
    """The version a complete, valid file holds (raises if it is damaged)."""
    if name == "model.mcnc":
        tensors, _ = mcnc.read(folder / name)  # checks both SHA-256 digests
        values = tensors["mcnc.beta"]
    else:
        tensors, meta = read_checkpoint(folder / name)
        values = torch.cat([tensors["model.weight"].reshape(-1), tensors["model.bias"]])
        assert values[0].item() == meta["info"]["version"]
    assert (values == values[0]).all(), f"{name} mixes two versions"
    return int(values[0].item())


def _newest(version: int, parity: int) -> int:
    """The newest of versions 1..``version`` with this parity (file), else its original."""
    return max((v for v in range(1, version + 1) if v % 2 == parity),
               default=-1 if parity else 0)


def _kill_during_save(folder: Path, announced: int, wait_for_temp: bool, delay: float) -> int:
    """Start the saver, SIGKILL it ``delay`` s after it announced version ``announced`` (and,
    with ``wait_for_temp``, after a temporary file appeared). Returns the last version it
    started."""
    child = subprocess.Popen(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(TESTS)!r}); "
         f"import test_crashes; test_crashes.save_forever({str(folder)!r})"],
        stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        for line in child.stdout:
            if line.strip() == f"start {announced}":
                break
        deadline = time.monotonic() + 30
        while wait_for_temp and len(os.listdir(folder)) == 2 and time.monotonic() < deadline:
            pass
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
        return max([announced] + [int(n) for n in re.findall(r"start (\d+)", child.stdout.read())])
    finally:
        child.kill()
        child.stdout.close()


def test_a_process_killed_while_saving_leaves_a_complete_file(tmp_path):
    """Kills land while a file's temporary copy is being written (found by watching the
    folder) and at fixed delays into a save; every time both files stay complete and valid."""
    trials = [(1, True, 0.0), (2, True, 0.0), (5, True, 0.002), (3, False, 0.005),
              (4, False, 0.02)]
    killed_mid_write = 0
    compressed, plain = _models()
    for trial, (announced, wait_for_temp, delay) in enumerate(trials):
        folder = tmp_path / str(trial)
        folder.mkdir()
        _write_version(-1, compressed, plain, folder)  # the original files
        _write_version(0, compressed, plain, folder)
        last = _kill_during_save(folder, announced, wait_for_temp, delay)
        # the version being written when killed, or the one before it
        assert _version(folder, "model.mcnc") in {_newest(last, 1), _newest(last - 1, 1)}
        assert _version(folder, "checkpoint.safetensors") in {_newest(last, 0),
                                                              _newest(last - 1, 0)}
        leftovers = [p for p in folder.iterdir()
                     if p.name not in ("model.mcnc", "checkpoint.safetensors")]
        for p in leftovers:  # SIGKILL skips clean-up: the temporary file must not look real
            assert p.name.startswith(".") and p.suffix not in (".mcnc", ".safetensors"), p.name
        killed_mid_write += bool(leftovers)
    print(f"{killed_mid_write} of {len(trials)} kills left a temporary file (hit a write)")
    assert killed_mid_write, "no kill hit a write: the test did not test anything"


def test_a_checkpoint_restores_the_global_random_state(tmp_path):
    model = nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    save_checkpoint(tmp_path / "c.safetensors", model, optimizer, None, {})
    expected = torch.rand(5)
    tensors, meta = read_checkpoint(tmp_path / "c.safetensors")
    restore(tensors, meta, model, optimizer, None)
    assert torch.equal(torch.rand(5), expected)


# -- mcnc train killed mid-epoch, then resumed -----------------------------------------------
TRAIN = ["train", "--model", "resnet20", "--dataset", "mnist", "--method", "mcnc", "--budget",
         "2000", "--epochs", "3", "--batch-size", "32", "--train-subset", "768",
         "--test-subset", "128", "--bn-batches", "4", "--deterministic"]
"""24 steps an epoch, about 1.4 s on one thread; batch norm makes dense tensors (trained
weights, running statistics) that must resume exactly too."""
VOLATILE = {"train_seconds", "machine"}


def _cli(*args: str) -> None:
    """``mcnc train`` with ``args`` in a fresh process, which must succeed."""
    result = subprocess.run([sys.executable, "-m", "mcnc", *TRAIN, *args], env=ENV,
                            capture_output=True, text=True, timeout=1800)  # a hang guard
    assert result.returncode == 0, result.stderr


def _kill_in_epoch_2(out: Path, steps: int = 8) -> int:
    """Run ``mcnc train`` until the checkpoint of epoch 1 exists and at least ``steps`` steps
    of epoch 2 are done, then SIGKILL it. Returns the steps done by then.

    The progress bar redraws its loss after every step, so counting the redraws of epoch 2's
    bar counts the steps (its ``n/total`` lags, being updated only every 0.1 s)."""
    log = out.with_suffix(".log")
    with open(log, "w") as err:
        child = subprocess.Popen([sys.executable, "-m", "mcnc", *TRAIN, "--out", str(out)],
                                 stdout=subprocess.DEVNULL, stderr=err, env=ENV)
    done = 0
    try:
        while child.poll() is None:  # a child that ends on its own was never killed: fails
            done = sum(line.startswith("epoch 2/3") and "loss=" in line
                       for line in re.split(r"[\r\n]", log.read_text()))
            if done >= steps and (out / "checkpoint.safetensors").exists():
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        assert child.wait(30) == -signal.SIGKILL, log.read_text()[-2000:]
    finally:
        child.kill()
    return done


def _last_result(out: Path) -> dict:
    result = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    for epoch in result["history"]:
        epoch.pop("seconds")
    return {k: v for k, v in result.items() if k not in VOLATILE}


def test_train_killed_mid_epoch_resumes_to_the_uninterrupted_parameters(tmp_path):
    straight, interrupted = tmp_path / "a", tmp_path / "b"
    _cli("--out", str(straight), "--no-progress")
    step = _kill_in_epoch_2(interrupted)
    assert step < 24, "the kill came after epoch 2's last step"
    _, meta = read_checkpoint(interrupted / "checkpoint.safetensors")
    assert meta["info"]["epoch"] == 1, f"killed at step {step}, after epoch 2 was saved"
    print(f"killed after step {step} of epoch 2")
    assert not (interrupted / "model.mcnc").exists()
    _cli("--out", str(interrupted), "--resume", "--no-progress")

    a, _ = mcnc.read(straight / "model.mcnc")
    b, _ = mcnc.read(interrupted / "model.mcnc")
    assert a.keys() == b.keys() and {"mcnc.alpha", "mcnc.beta"} <= a.keys()
    assert any(name.startswith("dense.") for name in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert b["mcnc.alpha"].abs().max() <= 20.0  # the default L
    assert _last_result(interrupted) == _last_result(straight)
    # optimiser, schedule, random state and history: the same after the last epoch too
    a, meta_a = read_checkpoint(straight / "checkpoint.safetensors")
    b, meta_b = read_checkpoint(interrupted / "checkpoint.safetensors")
    assert a.keys() == b.keys() and "rng.cpu" in a
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for key in ("param_groups", "scheduler"):
        assert meta_a[key] == meta_b[key]
    for meta in (meta_a, meta_b):
        for epoch in meta["info"]["history"]:
            epoch.pop("seconds")
    assert meta_a["info"]["history"] == meta_b["info"]["history"]


# -- a NaN loss --------------------------------------------------------------------------------
SMALL = ["train", "--model", "mlp", "--method", "mcnc", "--budget", "2000", "--batch-size",
         "64", "--train-subset", "512", "--test-subset", "256", "--no-progress"]


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch,
                                                                      capsys):
    checkpoint = tmp_path / "checkpoint.safetensors"
    cross_entropy = torch.nn.functional.cross_entropy
    steps, saved = [], {}

    def nan_at_step_3_of_epoch_2(logits, labels):
        steps.append(None)
        if len(steps) == 8 + 3:  # 512 samples in batches of 64: 8 steps an epoch
            saved["bytes"] = checkpoint.read_bytes()
            return cross_entropy(logits, labels) * float("nan")
        return cross_entropy(logits, labels)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", nan_at_step_3_of_epoch_2)
    assert main([*SMALL, "--epochs", "3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mcnc train: error: the training loss became nan at step 3/8 of "
                          "epoch 2/3"), err
    assert f"the last good checkpoint, after epoch 1, is kept at {checkpoint}" in err
    assert "lower learning rate (--lr, now 0.3; --dense-lr, now 0.001)" in err
    assert checkpoint.read_bytes() == saved["bytes"]
    tensors, meta = read_checkpoint(checkpoint)
    assert meta["info"]["epoch"] == 1
    assert tensors["model.manifold.alpha"].abs().max() <= 20.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors"]


def test_a_loss_that_overflows_stops_the_cli_with_an_error(tmp_path, capsys):
    assert main([*SMALL, "--epochs", "1", "--lr", "1e30", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"mcnc train: error: the training loss became (nan|inf) at step \d+/8 "
                        r"of epoch 1/1, so the run stopped; no checkpoint had been written to "
                        r".* yet and no model file was written\. Try a lower learning rate .*\n",
                        err), err
    assert list(tmp_path.iterdir()) == []
