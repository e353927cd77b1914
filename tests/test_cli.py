import json

import safetensors.torch
import torch
from toymodels import make

import mcnc
from mcnc.cli import main
from mcnc.demo import DemoSettings, run_demo


def _saved(tmp_path):
    m = mcnc.compress(make("odd"), mcnc.MCNCConfig(k=3, d=64, width=8))
    return mcnc.save(m, tmp_path / "m.mcnc"), m


def test_inspect(tmp_path, capsys):
    path, _ = _saved(tmp_path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "mode scratch" in out and "k=3 d=64" in out and "mcnc.alpha" in out
    assert "200 values, generated from 16 alphas and betas" in out
    assert main(["inspect", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["generator"]["d"] == 64


def test_reconstruct_command(tmp_path):
    path, m = _saved(tmp_path)
    out = tmp_path / "dense.safetensors"
    assert main(["reconstruct", str(path), "-o", str(out)]) == 0
    dense = make("odd")
    dense.load_state_dict(safetensors.torch.load_file(out), strict=True)
    assert torch.equal(dense.head.weight, m.dense_state_dict()["head.weight"])


def test_bad_file_gives_a_message_and_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.mcnc"
    bad.write_bytes(b"not a model at all")
    assert main(["inspect", str(bad)]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing.mcnc")]) == 2


def test_coverage_command(tmp_path, capsys):
    fig = tmp_path / "fig.png"
    assert main(["coverage", "--k", "4", "--d", "32", "--samples", "256", "--projections", "16",
                 "--figure", str(fig)]) == 0
    out = capsys.readouterr().out
    assert "sine" in out and "relu" in out
    assert fig.read_bytes()[:4] == b"\x89PNG"


def test_demo_end_to_end_on_a_slice(tmp_path):
    result = run_demo(DemoSettings(epochs=1, limit=600, out=str(tmp_path), progress=False))
    assert result["param_ratio"] > 100
    assert result["byte_ratio"] > 50
    assert 0.2 < result["test_accuracy"] <= 1.0
    assert result["storage"]["float32"]["test_accuracy"] == result["test_accuracy"]
    for name in ("demo.mcnc", "demo-float16.mcnc", "demo_accuracy.png", "demo.json"):
        assert (tmp_path / name).stat().st_size > 0


def test_train_command_prints_one_json_line_and_inspects_any_method(tmp_path, capsys):
    assert main(["train", "--method", "nola", "--budget", "400", "--rank", "4", "--epochs", "1",
                 "--train-subset", "256", "--test-subset", "128", "--no-progress",
                 "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["method"] == "nola" and result["method_numbers"] == 400
    assert main(["inspect", str(tmp_path / "model.mcnc")]) == 0
    out = capsys.readouterr().out
    assert "nola file" in out and "nola.coefficients" in out and "[400]" in out


def test_train_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert main(["train", "--method", "pranc", "--epochs", "1", "--train-subset", "64"]) == 2
    assert "--budget" in capsys.readouterr().err
    assert main(["train", "--dataset", "cifar10", "--data-root", str(tmp_path),
                 "--method", "dense"]) == 2
    assert "data_batch_1.bin" in capsys.readouterr().err
