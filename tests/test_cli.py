import argparse
import importlib.metadata
import json
import re
import subprocess
import sys

import pytest
import safetensors.torch
import torch
from toymodels import make

import mcnc
from mcnc.apps.cli import build_parser, main
from mcnc.apps.demo import DemoSettings, run_demo


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


@pytest.mark.parametrize("options, line", [
    ({"mixing": "hadamard"}, "mixing: hadamard"),
    ({"activation": "linear", "mixing": "none"}, "generator linear k=3"),
])
def test_inspect_shows_what_makes_a_file_version_2(tmp_path, capsys, options, line):
    model = mcnc.compress(make("odd"), mcnc.MCNCConfig(k=3, d=64, width=8, **options))
    assert main(["inspect", str(mcnc.save(model, tmp_path / "m.mcnc"))]) == 0
    out = capsys.readouterr().out
    assert "mcnc format version 2" in out and line in out


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


def test_train_beta_lr_scale_sets_and_records_beta_s_own_rate(tmp_path, capsys, monkeypatch):
    import mcnc.apps.classifier_run as run

    groups = []
    real = run.param_groups
    monkeypatch.setattr(run, "param_groups", lambda *a, **kw: groups.append(real(*a, **kw))
                        or groups[-1])
    assert main(["train", "--budget", "300", "--lr", "0.2", "--beta-lr-scale", "0.25",
                 "--beta-rate", "absolute", "--epochs", "1", "--train-subset", "128",
                 "--test-subset", "64", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["lr"] == 0.2 and result["beta_lr_scale"] == 0.25
    assert result["beta_rate"] == "absolute"
    rates = sorted(g["initial_lr"] for g in groups[-1])  # "lr" has decayed to 0 by now
    assert rates[:2] == [pytest.approx(0.05), 0.2]


def test_train_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert main(["train", "--method", "pranc", "--epochs", "1", "--train-subset", "64"]) == 2
    assert "--budget" in capsys.readouterr().err
    assert main(["train", "--dataset", "cifar10", "--data-root", str(tmp_path),
                 "--method", "dense"]) == 2
    assert "data_batch_1.bin" in capsys.readouterr().err


COMMANDS = ("demo", "train", "compare", "finetune", "generate", "coverage", "bench", "inspect",
            "reconstruct")


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Every sub-command's parser, by name, in ``mcnc --help`` order."""
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _exit_code_and_stdout(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code, capsys.readouterr().out


def test_version_prints_the_installed_version(capsys):
    code, out = _exit_code_and_stdout(["--version"], capsys)
    assert code == 0
    assert out == f"mcnc {importlib.metadata.version('mcnc')}\n"


def test_version_falls_back_to_the_package_attribute(monkeypatch, capsys):
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    monkeypatch.setattr(mcnc, "__version__", "9.8.7-test", raising=False)
    assert _exit_code_and_stdout(["--version"], capsys) == (0, "mcnc 9.8.7-test\n")


def test_every_option_of_every_command_has_help():
    commands = _commands()
    assert tuple(commands) == COMMANDS
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert all(choice.help for choice in sub._choices_actions)
    for name, parser in commands.items():
        options = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
        assert options, name
        for action in options:
            what = f"mcnc {name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip(), f"{what} has no help"
        parser.format_help()  # every help text expands (no stray %)


def test_help_shows_defaults_without_noise(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: no wrapped defaults
    for name, parser in _commands().items():
        text = parser.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, name
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert f"(default: {action.default})" in text, (name, action.dest)


def test_train_help_shows_the_default_epochs(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "1000")
    epochs = build_parser().parse_args(["train"]).epochs
    code, out = _exit_code_and_stdout(["train", "--help"], capsys)
    assert code == 0
    assert re.search(rf"^ +--epochs EPOCHS +\S.*\(default: {epochs}\)$", out, re.MULTILINE)


def test_each_command_runs_its_own_handler():
    from mcnc.apps.compare import PRESETS

    minimal = {"compare": ["--preset", next(iter(PRESETS))], "inspect": ["f.mcnc"],
               "reconstruct": ["f.mcnc", "-o", "f.safetensors"],
               "generate": ["--adapter", "a", "hi"]}
    for name in COMMANDS:
        args = build_parser().parse_args([name, *minimal.get(name, [])])
        assert args.command == name and args.func.__name__ == f"_{name}"


def test_importing_the_cli_leaves_the_command_modules_unimported():
    lazy = ("mcnc.apps.classifier_run", "mcnc.apps.compare", "mcnc.apps.finetune",
            "mcnc.apps.bench.run", "transformers")
    code = f"import sys, mcnc.apps.cli; print([m for m in {lazy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_directories_and_adapter_folders(tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    assert main(["inspect", str(tmp_path)]) == 2
    assert "is a directory; pass the path of a .mcnc file" in capsys.readouterr().err
    assert main(["reconstruct", str(tmp_path), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "is a directory" in capsys.readouterr().err
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24,
                                        num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=1))
    model = mcnc.get_adapter_model(base, mcnc.MCNCAdapterConfig(rank=2, d=200))
    model.save_pretrained(tmp_path / "adapter")
    assert main(["inspect", str(tmp_path / "adapter")]) == 0
    out = capsys.readouterr().out
    assert "mcnc adapter of rank 2 on 7 layers" in out and "mcnc.alpha" in out
    assert main(["inspect", "--json", str(tmp_path / "adapter")]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "mcnc"


def test_errors_name_the_flag_the_user_typed(tmp_path, capsys):
    m = mcnc.compress(make("odd"), mcnc.MCNCConfig(mode="delta", k=3, d=64, width=8))
    mcnc.save(m, tmp_path / "delta.mcnc")
    assert main(["reconstruct", str(tmp_path / "delta.mcnc"), "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--base" in err and "base_state_dict" not in err
    assert main(["train", "--dataset", "cifar10", "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--data-root" in err and "root=" not in err


def test_finetune_takes_any_mcnc_option_and_names_the_flag_in_errors(capsys):
    args = build_parser().parse_args(["finetune", "--mcnc-option", "k=8", "--mcnc-option",
                                      "freeze_a=true", "--mcnc-option", "activation=relu"])
    assert args.mcnc_option == [("k", 8), ("freeze_a", True), ("activation", "relu")]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--mcnc-option", "k"])
    assert "expected KEY=VALUE" in capsys.readouterr().err
    for option, message in (("k=0", "k must be"), ("freeze_a=1", "freeze_a must be true"),
                            ("d=10", "cannot be set here")):
        assert main(["finetune", "--model", "tiny-llama", "--mcnc-option", option]) == 2
        err = capsys.readouterr().err
        assert message in err and "--mcnc-option" in err and "mcnc_options" not in err
