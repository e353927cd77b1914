"""Adapters on a tiny LLaMA built from a config (random weights, no download)."""

import json
import math
from dataclasses import replace

import pytest
import safetensors.torch
import torch
from filebytes import signed_adapter
from toymodels import fit
from transformers import LlamaConfig, LlamaForCausalLM

import mcnc
from mcnc.adapters.files import CONFIG_NAME, WEIGHTS_NAME
from mcnc.adapters.sources import generate_all
from mcnc.core.generator import Generator

VOCAB = 96
BASE = mcnc.adapters.BASE
CONFIGS = {
    "mcnc": mcnc.MCNCAdapterConfig(rank=4, d=400, seed=1),
    "nola": mcnc.NOLAAdapterConfig(rank=4, coefficients=200, seed=2),
    "lora": mcnc.LoRAAdapterConfig(rank=2, seed=3),
}


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config).eval()


def tokens(batch: int = 3, length: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def train_steps(model: mcnc.AdapterModel, steps: int = 3, lr: float = 0.05) -> None:
    """A few optimiser steps so that adapters are not at their (identity) start."""
    model.train()
    ids = tokens(4, 8, seed=5)
    fit(model, lambda: model(input_ids=ids, labels=ids).loss, steps, lr)
    model.eval()


def logits(model, ids, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits


@pytest.fixture(params=sorted(CONFIGS))
def method(request) -> str:
    return request.param


def trained_model(method: str, name: str = "default") -> mcnc.AdapterModel:
    model = mcnc.get_adapter_model(tiny_llama(), CONFIGS[method], adapter_name=name)
    train_steps(model)
    return model


def test_starts_as_the_base_model(method):
    ids = tokens()
    model = mcnc.get_adapter_model(tiny_llama(), CONFIGS[method])
    assert torch.equal(logits(model, ids), logits(tiny_llama(), ids))


def test_training_changes_only_adapter_parameters(method):
    model = mcnc.get_adapter_model(tiny_llama(), CONFIGS[method])
    base_before = {k: v.clone() for k, v in model.base_model.state_dict().items()}
    adapter_before = {k: v.clone() for k, v in model.adapters.state_dict().items()}
    train_steps(model)
    assert all(torch.equal(v, base_before[k]) for k, v in model.base_model.state_dict().items())
    changed = [k for k, v in model.adapters.state_dict().items()
               if not torch.equal(v, adapter_before[k])]
    trained = {n for n, p in model.adapters.named_parameters() if p.requires_grad}
    assert set(changed) == trained == {f"default.{n}" for n in
                                       {"mcnc": ["manifold.alpha", "manifold.beta"],
                                        "nola": ["coefficients"],
                                        "lora": ["A", "B"]}[method]}
    assert not torch.equal(logits(model, tokens()), logits(tiny_llama(), tokens()))


def test_trainable_counts():
    shapes = [(32, 32), (16, 32), (16, 32), (32, 32), (48, 32), (48, 32), (32, 48)] * 2
    total_a = sum(i for _, i in shapes)
    total_b = sum(o for o, _ in shapes)
    counts = {m: mcnc.get_adapter_model(tiny_llama(), c).trainable_count()
              for m, c in CONFIGS.items()}
    assert counts["lora"] == 2 * (total_a + total_b)
    assert counts["nola"] == 200
    chunks = -(-4 * total_a // 400) + -(-4 * total_b // 400)
    assert counts["mcnc"] == chunks * (5 + 1)


def test_save_and_load_give_identical_logits(method, tmp_path):
    model = trained_model(method)
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {CONFIG_NAME, WEIGHTS_NAME}
    restored = mcnc.AdapterModel.from_pretrained(tiny_llama(), tmp_path)
    ids = tokens()
    assert torch.equal(logits(restored, ids), logits(model, ids))
    assert restored.trainable_count() == 0  # loaded for inference unless is_trainable=True


def test_mcnc_file_holds_only_alpha_and_beta(tmp_path):
    model = trained_model("mcnc")
    model.save_pretrained(tmp_path)
    source = model.adapters["default"]
    size = (tmp_path / WEIGHTS_NAME).stat().st_size
    assert size < 4 * (source.alpha.numel() + source.beta.numel()) + 400
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["method"] == "mcnc" and config["k"] == 5
    assert len(config["targets"]["block"]) * 2 == 14  # 7 layers per block, 2 blocks


def _rewrite_config(folder, config: dict) -> None:
    """Replace a folder's config, with the digests its format version asks for."""
    tensors = safetensors.torch.load_file(folder / WEIGHTS_NAME)
    config_bytes, tensor_bytes = signed_adapter(config, tensors)
    (folder / WEIGHTS_NAME).write_bytes(tensor_bytes)
    (folder / CONFIG_NAME).write_bytes(config_bytes)


def test_config_lists_one_layer_per_line_and_versions_1_to_3_still_load(tmp_path):
    """Versions 3 and 4 write a packed block, one ``[template, out, in]`` line per layer of it
    (version 4 without optional spaces, its digest in the tensor file); version 2 wrote every
    target as one ``[name, out, in]`` line and version 1 as an object of five lines, and such
    folders still load to the same logits."""
    from mcnc.adapters.files import unpack_targets

    model = trained_model("mcnc")
    model.save_pretrained(tmp_path)
    text = (tmp_path / CONFIG_NAME).read_text()
    config = json.loads(text)
    block = config["targets"]["block"]
    assert config["format_version"] == 4 and len(block) == 7 and ": " not in text
    assert len(text.splitlines()) == len(config) + len(block) + 3  # braces, "], indices"
    listed = unpack_targets(config["targets"])
    assert listed[0] == ["model.layers.0.self_attn.q_proj", 32, 32] and len(listed) == 14
    ids = tokens()
    _rewrite_config(tmp_path, {**config, "format_version": 3})
    restored = mcnc.AdapterModel.from_pretrained(tiny_llama(), tmp_path)
    assert torch.equal(logits(restored, ids), logits(model, ids))
    _rewrite_config(tmp_path, {**config, "format_version": 2, "targets": listed})
    restored = mcnc.AdapterModel.from_pretrained(tiny_llama(), tmp_path)
    assert torch.equal(logits(restored, ids), logits(model, ids))
    keys = ("name", "out_features", "in_features")
    objects = [dict(zip(keys, t, strict=True)) for t in listed]
    _rewrite_config(tmp_path, {**config, "format_version": 1, "targets": objects})
    restored = mcnc.AdapterModel.from_pretrained(tiny_llama(), tmp_path)
    assert torch.equal(logits(restored, ids), logits(model, ids))
    _rewrite_config(tmp_path, {**config, "format_version": 2, "targets": objects})
    with pytest.raises(mcnc.FormatError, match=r"list of \[name, out_features, in_features\]"):
        mcnc.AdapterModel.from_pretrained(tiny_llama(), tmp_path)
    _rewrite_config(tmp_path, {**config, "format_version": 2})  # a block in a version-2 file
    with pytest.raises(mcnc.FormatError, match=r"list of \[name, out_features, in_features\]"):
        mcnc.AdapterModel.from_pretrained(tiny_llama(), tmp_path)


def test_a_config_without_mixing_reads_as_unmixed_whatever_the_default(tmp_path):
    """Folders written before ``mixing`` existed were unmixed: the key's absence means
    ``"none"``, not the current default."""
    from mcnc.adapters.files import ABSENT_MCNC_KEYS

    model = mcnc.get_adapter_model(tiny_llama(), replace(CONFIGS["mcnc"], mixing="none"))
    train_steps(model)
    assert mcnc.MCNCAdapterConfig().mixing == "hadamard"  # the default is not what is absent
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    del config["mixing"]
    _rewrite_config(tmp_path, config)
    restored = mcnc.AdapterModel.from_pretrained(tiny_llama(), tmp_path)
    assert ABSENT_MCNC_KEYS["mixing"] == restored.adapters["default"].config.mixing == "none"
    assert torch.equal(logits(restored, tokens()), logits(model, tokens()))


def test_merged_forward_equals_unmerged(method):
    model = trained_model(method)
    ids = tokens()
    unmerged = logits(model, ids)
    model.merge_adapter()
    torch.testing.assert_close(logits(model, ids), unmerged, atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(logits(model, ids), unmerged, atol=1e-5, rtol=1e-5)
    plain = trained_model(method).merge_and_unload()
    assert isinstance(plain, LlamaForCausalLM)
    assert not any(isinstance(m, mcnc.adapters.AdapterLinear) for m in plain.modules())
    torch.testing.assert_close(logits(plain, ids), unmerged, atol=1e-5, rtol=1e-5)


def test_disable_adapter_runs_the_base_model(method):
    model = trained_model(method)
    ids, base = tokens(), logits(tiny_llama(), tokens())
    with model.disable_adapter():
        assert torch.equal(logits(model, ids), base)
    model.merge_adapter()
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, ids), base, atol=1e-5, rtol=1e-5)
    assert model.state.merged == ["default"]


def several_adapters() -> mcnc.AdapterModel:
    model = mcnc.AdapterModel(tiny_llama())
    for name, config in CONFIGS.items():
        model.add_adapter(name, config)
        model.set_adapter(name)
        train_steps(model)
    model.add_adapter("mcnc2", mcnc.MCNCAdapterConfig(rank=3, d=400, seed=9,
                                                      target_modules=("q_proj", "v_proj")))
    model.set_adapter("mcnc2")
    train_steps(model)
    return model


def assert_each_row_as_alone(model: mcnc.AdapterModel, ids: torch.Tensor, names: list[str],
                             mixed: torch.Tensor) -> None:
    """Row i of a mixed batch's logits equals sample i run alone with adapter ``names[i]``."""
    for i, name in enumerate(names):
        if name == mcnc.adapters.BASE:
            with model.disable_adapter():
                alone = logits(model, ids[i : i + 1])
        else:
            model.set_adapter(name)
            alone = logits(model, ids[i : i + 1])
        torch.testing.assert_close(mixed[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_mixed_batch_equals_each_sample_with_its_own_adapter():
    model = several_adapters()
    names = ["mcnc", "nola", mcnc.adapters.BASE, "lora", "mcnc2", "mcnc"]
    ids = tokens(len(names), 5, seed=3)
    mixed = logits(model, ids, adapter_names=names)
    assert_each_row_as_alone(model, ids, names, mixed)


def many_mcnc_adapters(count: int = 8) -> mcnc.AdapterModel:
    """``count`` MCNC adapters of ranks 2 and 4 with their own scalings and random trained
    numbers; the last one has another seed, hence another generator."""
    model = mcnc.AdapterModel(tiny_llama())
    g = torch.Generator().manual_seed(4)
    for i in range(count):
        config = mcnc.MCNCAdapterConfig(rank=4 if i % 2 else 2, d=400, scaling=0.5 + i / 4,
                                        seed=2 if i == count - 1 else 1)
        source = model.add_adapter(f"a{i}", config)
        with torch.no_grad():
            source.alpha.uniform_(-1, 1, generator=g)
            source.beta.copy_(source.beta.abs().max() * torch.rand(source.beta.shape,
                                                                    generator=g))
    return model.eval()


SPARSE = ["a0", "a3", BASE, "a3", "a7", "a1", "a0", "a2", "a4", "a5", "a6", "a0", BASE]
"""Eight adapters over 11 samples: too few samples per adapter to group them (stacked)."""
GROUPED = [*SPARSE, "a1", "a2", "a4", "a5", "a6", "a7", "a3"]
"""The same adapters over 18 samples, two or more each: each adapter runs on its samples."""


def spy_on_mixed_paths(monkeypatch) -> list[str]:
    """Record which way each layer computes a mixed batch's deltas."""
    used, linear = [], mcnc.adapters.AdapterLinear
    for path in ("_grouped_delta", "_stacked_delta"):
        original = getattr(linear, path)

        def spy(self, *args, original=original, path=path):
            used.append(path)
            return original(self, *args)
        monkeypatch.setattr(linear, path, spy)
    return used


@pytest.mark.parametrize(("names", "path"), [(SPARSE, "_stacked_delta"),
                                             (GROUPED, "_grouped_delta")])
def test_many_adapters_in_one_batch_equal_each_adapter_alone(names, path, monkeypatch):
    """Samples grouped unevenly over eight adapters of two ranks, with samples of the base
    model: each sample equals its adapter run alone, to float32 round-off (atol = rtol = 1e-5:
    the products run on other shapes), whether the layers stack the samples' factors or run
    each adapter on its own samples. A batch that uses one adapter throughout runs the unmixed
    products: the same bits."""
    model = many_mcnc_adapters()
    ids = tokens(len(names), 5, seed=3)
    used = spy_on_mixed_paths(monkeypatch)
    mixed = logits(model, ids, adapter_names=names)
    assert set(used) == {path}
    assert_each_row_as_alone(model, ids, names, mixed)
    model.set_adapter("a3")
    assert torch.equal(logits(model, ids[:4], adapter_names=["a3"] * 4), logits(model, ids[:4]))


@pytest.mark.parametrize("names", [SPARSE, GROUPED])
def test_many_adapters_in_one_batch_train(names):
    """An adapter's gradient from a mixed batch is its gradient on its own samples alone."""
    model = many_mcnc_adapters()
    model.requires_grad_(False)
    for source in model.adapters.values():
        source.requires_grad_(True)
    ids = tokens(len(names), 5, seed=3)
    model(input_ids=ids, adapter_names=names).logits.sum().backward()
    mixed = model.adapters["a0"].alpha.grad.clone()
    assert mixed.abs().sum() > 0
    model.zero_grad()
    model.set_adapter("a0")
    rows = [i for i, n in enumerate(names) if n == "a0"]
    model(input_ids=ids[rows]).logits.sum().backward()
    torch.testing.assert_close(mixed, model.adapters["a0"].alpha.grad, atol=1e-4, rtol=1e-4)


def test_mixed_batch_checks_each_adapter_once_per_forward(monkeypatch):
    """A mixed batch checks its adapters' cached factors once per forward pass, not once per
    layer, and still sees an adapter changed between passes."""
    model = many_mcnc_adapters()
    names = [f"a{i % 8}" for i in range(10)]
    ids = tokens(len(names), 5, seed=3)
    logits(model, ids, adapter_names=names)  # generates and caches every adapter's factors
    checks, key = [], mcnc.adapters.layer.AdapterState._key
    monkeypatch.setattr(mcnc.adapters.layer.AdapterState, "_key",
                        lambda self, source: checks.append(1) or key(self, source))
    before = logits(model, ids, adapter_names=names)
    assert len(checks) == 8
    with torch.no_grad():
        model.adapters["a5"].beta.mul_(2)
    after = logits(model, ids, adapter_names=names)
    assert torch.equal(after[:5], before[:5]) and not torch.equal(after[5], before[5])
    model.set_adapter("a5")
    torch.testing.assert_close(after[5:6], logits(model, ids[5:6]), atol=1e-5, rtol=1e-5)


def test_mixed_batch_generation():
    model = several_adapters()
    prompts = tokens(3, 4, seed=7)
    names = ["mcnc", "lora", "mcnc2"]
    settings = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        mixed = model.generate(input_ids=prompts, adapter_names=names, **settings)
        for i, name in enumerate(names):
            model.set_adapter(name)
            alone = model.generate(input_ids=prompts[i : i + 1], **settings)
            assert torch.equal(mixed[i : i + 1], alone)


def test_mcnc_adapters_are_generated_in_one_call(monkeypatch):
    model = several_adapters()  # "mcnc2" has another seed, hence another generator
    model.add_adapter("mcnc3", mcnc.MCNCAdapterConfig(rank=3, d=400, seed=1,
                                                      target_modules=("q_proj", "v_proj")))
    model.set_adapter("mcnc3")
    train_steps(model)
    sources = {n: model.adapters[n] for n in ("mcnc", "mcnc3")}
    calls, combine = [], Generator.combine

    def counted(self, *args):
        calls.append(self)
        return combine(self, *args)

    with monkeypatch.context() as patch:
        patch.setattr(Generator, "combine", counted)
        together = generate_all(sources)
    assert len(calls) == 1
    for name, source in sources.items():
        for got, alone in zip(together[name], source.factors(), strict=True):
            torch.testing.assert_close(got, alone, atol=1e-6, rtol=1e-6)
    # mixed chunks are copied by the mixing: batches of at most MIXED_BATCH_BYTES of them
    assert all(s.manifold.mixings is not None for s in sources.values())
    one_adapter = 4 * sources["mcnc"].generated_size
    with monkeypatch.context() as patch:
        patch.setattr(Generator, "combine", counted)
        patch.setattr(mcnc.adapters.sources, "MIXED_BATCH_BYTES", one_adapter)
        calls.clear()
        apart = generate_all(sources)
    assert len(calls) == 2
    for name in sources:
        for got, batched in zip(apart[name], together[name], strict=True):
            torch.testing.assert_close(got, batched, atol=1e-6, rtol=1e-6)


MIXED = mcnc.MCNCAdapterConfig(rank=4, d=400, seed=1, mixing="hadamard")
PINNED_BETA = 1.9955506324768066
PINNED_A = [0.10562377, 0.1627412, 0.12560068, -0.0096879313]
PINNED_SIGNS = [1.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0]
PINNED_ORDER = [1361, 512, 646, 433, 18, 1134]


def test_mixed_mcnc_adapter_starts_with_loras_spread_per_layer():
    """With the mixing every A entry moves with every chunk, but each layer's A still starts
    with the spread of LoRA's initial A (1 / sqrt(3 in_features)); B starts at zero."""
    model = mcnc.get_adapter_model(tiny_llama(), MIXED)
    ids = tokens()
    assert torch.equal(logits(model, ids), logits(tiny_llama(), ids))
    source = model.adapters["default"]
    with torch.no_grad():
        a, b = source.factors()
    assert not b.any()
    layout = source.layout
    for t, part in zip(layout.targets, torch.split(a, [layout.a_size(t) for t in layout.targets]),
                       strict=True):
        assert part.std().item() == pytest.approx(1 / math.sqrt(3 * t.in_features), rel=0.2)
    # every chunk reaches beyond its own d entries: the first chunk's gradient covers them all
    alpha = source.alpha.detach().clone().requires_grad_()
    flat = source.generator.chunks(alpha, source.beta.detach()).reshape(-1)
    grad = torch.autograd.grad(source.split(flat)[0][-100:].sum(), alpha)[0]
    assert grad[0].abs().sum() > 0  # chunk 0 moves the last A entries


def test_mixed_mcnc_adapter_trains_saves_merges_and_batches(tmp_path):
    model = mcnc.get_adapter_model(tiny_llama(), MIXED)
    train_steps(model)
    ids = tokens()
    trained = logits(model, ids)
    assert not torch.equal(trained, logits(tiny_llama(), ids))
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["mixing"] == "hadamard"
    restored = mcnc.AdapterModel.from_pretrained(tiny_llama(), tmp_path)
    assert torch.equal(logits(restored, ids), trained)
    model.add_adapter("plain", replace(MIXED, mixing="none"))
    sources = {n: model.adapters[n] for n in ("default", "plain")}
    together = generate_all(sources)  # one generator call for both, each mixed or not
    for name, source in sources.items():
        for got, alone in zip(together[name], source.factors(), strict=True):
            torch.testing.assert_close(got, alone, atol=1e-6, rtol=1e-6)
    model.set_adapter("default")
    model.merge_adapter()
    torch.testing.assert_close(logits(model, ids), trained, atol=1e-5, rtol=1e-5)


def test_mixed_mcnc_adapter_regenerates_pinned_values():
    """The seeded signs and permutation of both regions (streams 0x0ADC0000 + 0..3) and the
    initial betas, pinned: a change to any of them changes what every saved folder means."""
    source = mcnc.get_adapter_model(tiny_llama(), MIXED).adapters["default"]
    with torch.no_grad():
        a, _ = source.factors()
    assert source.manifold.mixings[0].length == 2048 and source.manifold.mixings[1].length == 2048
    assert source.beta[0, 0].item() == pytest.approx(PINNED_BETA, rel=1e-6)
    torch.testing.assert_close(a[:4], torch.tensor(PINNED_A), atol=1e-7, rtol=1e-5)
    assert source.manifold.mixings[0].signs[:8].tolist() == PINNED_SIGNS
    assert source.manifold.mixings[1].order[:6].tolist() == PINNED_ORDER


def test_set_adapter_chooses_what_trains():
    model = several_adapters()
    model.set_adapter("nola")
    trained = {n.split(".")[0] for n, p in model.adapters.named_parameters() if p.requires_grad}
    assert trained == {"nola"}


def test_several_adapters_save_to_subfolders(tmp_path):
    model = several_adapters()
    model.save_pretrained(tmp_path, selected_adapters=["mcnc", "lora"])
    restored = mcnc.AdapterModel(tiny_llama())
    restored.load_adapter(tmp_path / "mcnc", adapter_name="mcnc")
    restored.load_adapter(tmp_path / "lora", adapter_name="lora")
    ids = tokens(2)
    assert torch.equal(logits(restored, ids, adapter_names=["lora", "mcnc"]),
                       logits(model, ids, adapter_names=["lora", "mcnc"]))


def test_a_failed_load_changes_nothing(tmp_path):
    trained_model("mcnc").save_pretrained(tmp_path)
    other = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=40, intermediate_size=48,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2))
    model = mcnc.AdapterModel(other)
    with pytest.raises(mcnc.FormatError, match="q_proj"):
        model.load_adapter(tmp_path)
    assert len(model.adapters) == 0
    assert not any(isinstance(m, mcnc.adapters.AdapterLinear) for m in other.modules())


def test_corrupt_files_raise_format_errors(tmp_path):
    trained_model("nola").save_pretrained(tmp_path)
    weights = (tmp_path / WEIGHTS_NAME).read_bytes()
    flipped = bytearray(weights)
    flipped[-3] ^= 0x10
    (tmp_path / WEIGHTS_NAME).write_bytes(bytes(flipped))
    with pytest.raises(mcnc.FormatError, match="digest"):
        mcnc.AdapterModel.from_pretrained(tiny_llama(), tmp_path)
    (tmp_path / WEIGHTS_NAME).write_bytes(weights[:50])
    with pytest.raises(mcnc.FormatError):
        mcnc.AdapterModel.from_pretrained(tiny_llama(), tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(mcnc.FormatError, match="JSON"):
        mcnc.AdapterModel.from_pretrained(tiny_llama(), tmp_path)
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        mcnc.AdapterModel.from_pretrained(tiny_llama(), tmp_path / "missing")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rank": 0}, "rank"),
    ({"target_modules": "("}, "regex"),
    ({"target_modules": []}, "target_modules"),
    ({"dropout": 1.5}, "dropout"),
    ({"k": 50, "d": 50}, "k must be smaller than d"),
    ({"mixing": "fft"}, "mixing must be one of"),
])
def test_bad_configs_say_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mcnc.MCNCAdapterConfig(**kwargs)


def test_selection_errors():
    with pytest.raises(ValueError, match="matched no linear layer"):
        mcnc.get_adapter_model(tiny_llama(), mcnc.LoRAAdapterConfig(target_modules=("qq",)))
    model = mcnc.get_adapter_model(tiny_llama(), CONFIGS["lora"])
    with pytest.raises(ValueError, match="exists already"):
        model.add_adapter("default", CONFIGS["lora"])
    with pytest.raises(ValueError, match="unknown adapters"):
        model(input_ids=tokens(1), adapter_names=["nope"])
    with pytest.raises(ValueError, match="one name per sample"):
        model(input_ids=tokens(3), adapter_names=["default", "default"])


def test_target_selection_by_name_and_regex():
    model = mcnc.AdapterModel(tiny_llama())
    by_name = model.select_targets(mcnc.LoRAAdapterConfig(target_modules=["q_proj", "down_proj"]))
    assert [t.name.split(".")[-1] for t in by_name] == ["q_proj", "down_proj"] * 2
    by_regex = model.select_targets(mcnc.LoRAAdapterConfig(target_modules=r".*\.1\..*_proj"))
    assert len(by_regex) == 7 and all(".1." in t.name for t in by_regex)
    assert "lm_head" not in {t.name for t in model.select_targets(CONFIGS["lora"])}


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = mcnc.get_adapter_model(tiny_llama(), CONFIGS["mcnc"])
        with torch.no_grad():
            model.adapters["default"].beta.add_(0.1)
        if checkpointing:
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        ids = tokens()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append(model.adapters["default"].alpha.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_adapters_train_and_serve_on_a_4bit_base(tmp_path):
    from mcnc.llm.quantized import Linear4bit, quantize_linears

    base = tiny_llama()
    assert quantize_linears(base) == 14
    model = mcnc.get_adapter_model(base, CONFIGS["mcnc"])
    assert all(isinstance(m.base_layer, Linear4bit) for m in model.modules()
               if isinstance(m, mcnc.adapters.AdapterLinear))
    train_steps(model)
    model.add_adapter("lora", CONFIGS["lora"])
    ids = tokens(2)
    mixed = logits(model, ids, adapter_names=["default", "lora"])
    torch.testing.assert_close(mixed[:1], logits(model, ids[:1]), atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path, selected_adapters=["default"])
    fresh = tiny_llama()
    quantize_linears(fresh)
    restored = mcnc.AdapterModel.from_pretrained(fresh, tmp_path)
    assert torch.equal(logits(restored, ids), logits(model, ids))
    with pytest.raises(ValueError, match="4-bit base"):
        model.merge_adapter()
    assert model.state.merged == []


def test_training_resumes_after_a_no_grad_evaluation(method):
    """train, evaluate under no_grad (factors cached without a graph), train again: the cached
    factors must not be reused where a gradient is needed (every Trainer run with evaluation
    steps does this)."""
    model = mcnc.get_adapter_model(tiny_llama(), CONFIGS[method])
    ids = tokens(4, 8, seed=5)
    for _ in range(2):
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads)
        model.zero_grad()
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)


def test_mixed_batches_train_after_evaluation():
    model = several_adapters()
    names = ["mcnc", "nola", "lora", "mcnc2"]
    ids = tokens(len(names), 5, seed=3)
    for name in names:
        model.adapters[name].requires_grad_(True)
    for _ in range(2):
        with torch.no_grad():
            model(input_ids=ids, adapter_names=names)
        model(input_ids=ids, labels=ids, adapter_names=names).loss.backward()
        assert all(p.grad is not None for n in names for p in model.adapters[n].parameters())
        model.zero_grad()


def test_joint_mixing_starts_small_near_the_base_and_reloads(tmp_path):
    """A and B as one mixed region: every entry starts at joint_start times its spread (LoRA's
    for A, 1/sqrt(3 r) for B), so the model starts near the base, and both factors train."""
    config = mcnc.MCNCAdapterConfig(rank=4, d=300, k=3, mixing="hadamard-joint",
                                    joint_start=0.05)
    model = mcnc.get_adapter_model(tiny_llama(), config)
    source = model.adapters["default"]
    with torch.no_grad():
        a, b = source.factors()
    spreads = source.layout.a_std()
    assert a.std() / (0.05 * spreads.pow(2).mean().sqrt()) == pytest.approx(1, abs=0.3)
    assert b.std() / (0.05 / math.sqrt(12)) == pytest.approx(1, abs=0.3)
    ids = tokens()
    start = (logits(model, ids) - logits(tiny_llama(), ids)).abs().max()
    assert 0 < start < 0.01
    train_steps(model)
    assert (logits(model, ids) - logits(tiny_llama(), ids)).abs().max() > 2 * start
    model.save_pretrained(tmp_path)
    served = mcnc.AdapterModel.from_pretrained(tiny_llama(), tmp_path)
    assert torch.equal(logits(served, ids), logits(model, ids))
    with pytest.raises(ValueError, match="joint_start must be in"):
        mcnc.MCNCAdapterConfig(mixing="hadamard-joint", joint_start=0)


def test_adapter_alphas_can_start_near_the_centre_of_the_cube():
    config = mcnc.MCNCAdapterConfig(rank=4, d=300, k=3, alpha_init_scale=0.1)
    source = mcnc.get_adapter_model(tiny_llama(), config).adapters["default"]
    assert 1.5 < source.alpha.abs().max() <= 2.0  # 0.1 * L=20


@pytest.mark.parametrize("mixing", ["hadamard", "none"])
def test_a_and_b_apart_can_start_smaller_or_nonzero_without_moving_betas_rate(mixing, tmp_path):
    """a_start scales A's start, b_start gives B entries the spread b_start / sqrt(3 r); the
    typical beta (beta's rate) is that of the default start, and the folder reloads."""
    base = mcnc.MCNCAdapterConfig(rank=4, d=300, k=3, mixing=mixing)
    config = replace(base, a_start=0.5, b_start=0.2)
    default = mcnc.get_adapter_model(tiny_llama(), base).adapters["default"]
    model = mcnc.get_adapter_model(tiny_llama(), config)
    source = model.adapters["default"]
    with torch.no_grad():
        (a0, _), (a, b) = default.factors(), source.factors()
    assert a.pow(2).mean().sqrt() / a0.pow(2).mean().sqrt() == pytest.approx(0.5, rel=0.1)
    assert b.pow(2).mean().sqrt() == pytest.approx(0.2 / math.sqrt(12), rel=0.1)
    assert source.manifold.typical_beta == default.manifold.typical_beta
    ids = tokens()
    assert not torch.equal(logits(model, ids), logits(tiny_llama(), ids))
    model.save_pretrained(tmp_path)
    served = mcnc.AdapterModel.from_pretrained(tiny_llama(), tmp_path)
    assert torch.equal(logits(served, ids), logits(model, ids))
    assert served.adapters["default"].config.b_start == 0.2
    assert {"a_start", "b_start"} <= set(json.loads((tmp_path / CONFIG_NAME).read_text()))
    assert not {"a_start", "b_start"} & set(base.to_dict())  # as 0.3.0 wrote and reads


def test_a_linear_generator_adapter_is_a_random_subspace_per_chunk_and_reloads(tmp_path):
    """The control ``activation="linear"``: every chunk is beta times a unit vector of one
    k-dimensional subspace (``W_out W_1``'s columns), the same for every chunk; it trains,
    saves and reloads like the sine generator's adapter."""
    config = mcnc.MCNCAdapterConfig(rank=4, d=300, k=3, mixing="none", activation="linear")
    model = mcnc.get_adapter_model(tiny_llama(), config)
    source = model.adapters["default"]
    with torch.no_grad():
        chunks = source.manifold.generator.chunks(source.alpha, torch.ones_like(source.beta))
    singular = torch.linalg.svdvals(chunks.reshape(-1, config.d).double())
    assert len(singular) > 10 and singular[3] < 1e-5 * singular[2]  # rank 3, to float32
    train_steps(model)
    ids = tokens()
    model.save_pretrained(tmp_path)
    served = mcnc.AdapterModel.from_pretrained(tiny_llama(), tmp_path)
    assert torch.equal(logits(served, ids), logits(model, ids))
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["activation"] == "linear"


def test_a_and_b_starts_are_checked():
    with pytest.raises(ValueError, match="b_start must be in"):
        mcnc.MCNCAdapterConfig(b_start=-0.1)
    with pytest.raises(ValueError, match="a_start must be in"):
        mcnc.MCNCAdapterConfig(a_start=0)
    with pytest.raises(ValueError, match="joint_start sets where both start"):
        mcnc.MCNCAdapterConfig(mixing="hadamard-joint", b_start=0.1)
    with pytest.raises(ValueError, match="are for A and B apart"):
        mcnc.MCNCAdapterConfig(mixing="hadamard-joint", freeze_a=True)
    with pytest.raises(ValueError, match="freeze_a must be true or false"):
        mcnc.MCNCAdapterConfig(freeze_a=1)


@pytest.mark.parametrize("mixing", ["hadamard", "none"])
def test_a_frozen_adapter_spends_its_budget_on_b(mixing, tmp_path):
    """With freeze_a, A is LoRA's seeded start (times a_start) and never trains, every chunk is
    B's (about twice as many at one budget), B's betas step as with A generated, and the
    folder (no A inside) reloads to the same model."""
    base = mcnc.MCNCAdapterConfig(rank=4, k=3, mixing=mixing, budget=400)
    config = replace(base, freeze_a=True, a_start=0.5)
    both = mcnc.get_adapter_model(tiny_llama(), base).adapters["default"]
    model = mcnc.get_adapter_model(tiny_llama(), config)
    source = model.adapters["default"]
    layout = source.layout
    lora = mcnc.get_adapter_model(tiny_llama(), mcnc.LoRAAdapterConfig(rank=4))
    a0 = lora.adapters["default"].A.detach()
    assert torch.equal(source.factors()[0], a0 * 0.5)
    assert source.alpha.shape[0] == -(-layout.total_b // source.config.d)
    assert source.alpha.shape[0] > 1.5 * both.manifold.counts[1]  # B's chunks, A frozen
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) <= 400
    per_entry = source.manifold.typical_beta / math.sqrt(source.config.d)
    assert per_entry == pytest.approx(both.manifold.typical_beta / math.sqrt(both.config.d),
                                      rel=0.25)
    ids = tokens()
    assert torch.equal(logits(model, ids), logits(tiny_llama(), ids))  # B starts at zero
    train_steps(model)
    assert torch.equal(source.factors()[0], a0 * 0.5)
    assert not torch.equal(logits(model, ids), logits(tiny_llama(), ids))
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert saved["freeze_a"] is True and "freeze_a" not in base.to_dict()
    assert set(safetensors.torch.load_file(tmp_path / WEIGHTS_NAME)) == {"mcnc.alpha",
                                                                         "mcnc.beta"}
    served = mcnc.AdapterModel.from_pretrained(tiny_llama(), tmp_path)
    assert torch.equal(logits(served, ids), logits(model, ids))


def test_the_active_adapter_gives_beta_a_rate_of_its_own():
    model = mcnc.get_adapter_model(tiny_llama(), CONFIGS["mcnc"])
    groups = model.param_groups(0.3, beta_lr_scale=0.1)
    source = model.adapters["default"]
    typical = source.manifold.typical_beta  # A's betas: B starts at zero and knows no spread
    assert typical == pytest.approx(source.beta[source.beta > 0].pow(2).mean().sqrt().item())
    assert [(g["params"], g["lr"]) for g in groups] == [([source.alpha], 0.3),
                                                       ([source.beta], 0.3 * 0.1 * typical)]
    absolute = model.param_groups(0.3, beta_lr_scale=0.1, beta_rate="absolute")
    assert [g["lr"] for g in absolute] == [0.3, 0.3 * 0.1]
    lora = mcnc.get_adapter_model(tiny_llama(), CONFIGS["lora"])
    with pytest.raises(ValueError, match="the lora adapter has no such rate"):
        lora.param_groups(1e-3, beta_lr_scale=0.1)
    # untold, beta trains at the adapter's default scale; told 1, at 1
    default = [g["lr"] for g in model.param_groups(0.3)]
    assert default == [0.3, 0.3 * mcnc.adapters.config.MCNC_ADAPTER_BETA_LR_SCALE * typical]
    assert [g["lr"] for g in model.param_groups(0.3, beta_lr_scale=1.0)] == [0.3, 0.3 * typical]


def test_layers_repeated_over_blocks_are_written_as_one_packed_block(tmp_path):
    from mcnc.adapters.files import pack_targets
    from mcnc.adapters.sources import AdaptedLayer

    model = mcnc.get_adapter_model(tiny_llama(), CONFIGS["mcnc"])
    targets = model.adapters["default"].layout.targets
    packed = pack_targets(targets)
    assert packed["indices"] == [0, 2] and len(packed["block"]) == 7
    assert packed["block"][0] == ["model.layers.{}.self_attn.q_proj", 32, 32]
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["format_version"] == 4 and config["targets"] == packed
    served = mcnc.AdapterModel.from_pretrained(tiny_llama(), tmp_path)
    assert served.adapters["default"].layout.targets == targets
    odd = (AdaptedLayer("layers.0.q", 4, 4), AdaptedLayer("layers.1.q", 4, 4),
           AdaptedLayer("head", 2, 4))
    assert pack_targets(odd) == [["layers.0.q", 4, 4], ["layers.1.q", 4, 4], ["head", 2, 4]]


@pytest.mark.parametrize("targets", [
    {"block": [["layers.{}.q", 4, 4]], "indices": [0, 2**30]},
    {"block": [["layers.q", 4, 4]], "indices": [0, 2]},
    {"block": [["layers.{}.q", 4, 4]], "indices": [3, 3]},
    {"block": [], "indices": [0, 2]},
    {"block": [["layers.{}.q", 4, 4]], "indices": [0, 2], "extra": 1},
])
def test_a_bad_packed_block_is_refused_before_it_is_expanded(tmp_path, targets):
    model = mcnc.get_adapter_model(tiny_llama(), CONFIGS["lora"])
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["targets"] = targets
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(mcnc.FormatError, match="a packed 'targets' must be"):
        mcnc.AdapterModel.from_pretrained(tiny_llama(), tmp_path)


def test_an_mcnc_adapter_config_can_ask_for_a_budget_instead_of_d(tmp_path):
    model = mcnc.get_adapter_model(tiny_llama(), mcnc.MCNCAdapterConfig(rank=4, budget=300))
    source = model.adapters["default"]
    trained = source.alpha.numel() + source.beta.numel()
    assert 300 - 2 * 6 < trained <= 300 and source.config.d != 5000
    model.save_pretrained(tmp_path)
    served = mcnc.AdapterModel.from_pretrained(tiny_llama(), tmp_path)
    assert served.adapters["default"].config == source.config  # budget and chosen d saved
    with pytest.raises(ValueError, match="budget"):
        mcnc.MCNCAdapterConfig(budget=0)


def test_a_nola_adapter_config_takes_a_budget_too():
    config = mcnc.NOLAAdapterConfig(rank=4, budget=150)
    assert config.coefficients == 150
    model = mcnc.get_adapter_model(tiny_llama(), config)
    assert model.trainable_count() == 150
