"""The README's Python example runs as written."""

import re
from pathlib import Path

import torch

README = Path(__file__).parents[1] / "README.md"


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert "203,530" in capsys.readouterr().out
    assert (tmp_path / "mlp.mcnc").stat().st_size < 12_000
    restored, skeleton2 = namespace["restored"], namespace["skeleton2"]
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(restored.eval()(x), skeleton2.eval()(x))


def test_readme_baselines_example_runs(tmp_path, monkeypatch):
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[1]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    model, restored = namespace["model"], namespace["restored"]
    assert model.trainable_count() == 3000
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(restored.eval()(x), model.eval()(x))
    assert set(namespace["dense_state"]) == set(model.layout.state_keys)


def test_readme_adapter_example_runs(tmp_path, monkeypatch, capsys):
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[2]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert "trainable params: 108 " in capsys.readouterr().out
    logits, base_logits = namespace["logits"], namespace["base_logits"]
    assert torch.equal(logits[2], base_logits[2]) and not torch.equal(logits[0], base_logits[0])
    assert (tmp_path / "adapters" / "lora" / "adapter_config.json").exists()
