import json
import re

import pytest
import safetensors.torch
import torch
from toymodels import Tied, example_input, fit, make

import mcnc
from mcnc.apps.coverage import fit_generator
from mcnc.core.fileformat import FORMAT_VERSION, atomic_write, metadata_digest

CASES = {
    "scratch-odd": ("odd", dict(k=3, d=64, width=8)),
    "scratch-m2": ("convnet", dict(k=4, d=100, m=2, width=8)),
    "lowrank": ("convnet", dict(mode="lowrank", rank=2, k=4, d=100, width=8)),
    "delta": ("convnet", dict(mode="delta", k=4, d=100, width=8)),
    "tied": ("tied", dict(k=3, d=40, width=8)),
}


def _trained(name, kwargs, steps=3):
    """A compressed model moved away from its initialisation by a few SGD steps."""
    m = mcnc.compress(make(name), mcnc.MCNCConfig(**kwargs))
    fit(m, lambda: m(example_input(name)).pow(2).mean(), steps, lr=0.1,
        optimizer=torch.optim.SGD)
    return m.eval()


def _out(model, name):
    with torch.no_grad():
        return model.eval()(example_input(name))


@pytest.mark.parametrize("case", CASES)
def test_save_load_reconstruct_are_bit_identical(case, tmp_path):
    name, kwargs = CASES[case]
    m = _trained(name, kwargs)
    expected = _out(m, name)
    path = mcnc.save(m, tmp_path / "model.mcnc")
    skeleton = make(name)
    loaded = mcnc.load(path, skeleton)
    assert torch.equal(_out(loaded, name), expected)
    base = make(name).state_dict() if kwargs.get("mode") == "delta" else None
    dense = make(name)
    dense.load_state_dict(mcnc.reconstruct(path, base), strict=True)
    assert torch.equal(_out(dense, name), expected)
    again = mcnc.load(path, mcnc.compress(make(name), mcnc.MCNCConfig(**kwargs)))
    assert torch.equal(_out(again, name), expected)


def test_file_size_is_trainable_values_plus_a_header(tmp_path):
    m = _trained("convnet", dict(k=4, d=100, width=8))
    path = mcnc.save(m, tmp_path / "m.mcnc")
    stored = sum(v.numel() for v in m.state_dict().values() if v.is_floating_point())
    payload = 4 * stored + 8  # float32 values + BatchNorm's int64 batch counter
    assert payload < path.stat().st_size < payload + 8192
    half = mcnc.save(m, tmp_path / "h.mcnc", dtype=torch.float16)
    saved = 2 * (m.alpha.numel() + m.beta.numel())
    assert path.stat().st_size - half.stat().st_size == pytest.approx(saved, abs=64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_storage(dtype, tmp_path):
    m = _trained("odd", CASES["scratch-odd"][1])
    path = mcnc.save(m, tmp_path / "m.mcnc", dtype=dtype)
    loaded = mcnc.load(path, make("odd"))
    assert loaded.alpha.dtype == torch.float32
    dense = make("odd")
    dense.load_state_dict(mcnc.reconstruct(path))
    assert torch.equal(_out(dense, "odd"), _out(loaded, "odd"))
    torch.testing.assert_close(_out(loaded, "odd"), _out(m, "odd"), atol=0.1, rtol=0.1)


def test_fitted_generator_is_stored(tmp_path):
    kwargs = dict(k=3, d=64, width=8)
    phi = fit_generator(mcnc.MCNCConfig(**kwargs).generator_spec(), steps=5, batch=64,
                        progress=False)
    m = mcnc.compress(make("odd"), mcnc.MCNCConfig(**kwargs), generator=phi).eval()
    path = mcnc.save(m, tmp_path / "m.mcnc")
    tensors, meta = mcnc.read(path)
    assert meta["generator"]["fitted"] and "generator.0" in tensors
    assert torch.equal(_out(mcnc.load(path, make("odd")), "odd"), _out(m, "odd"))


def test_metadata_describes_the_model(tmp_path):
    path = mcnc.save(_trained("tied", CASES["tied"][1]), tmp_path / "m.mcnc")
    _, meta = mcnc.read(path)
    assert meta["format_version"] == 2 and meta["mixing"] == "hadamard"  # the defaults
    assert meta["generator"]["prng"] == "philox4x32-10"
    assert meta["generator"]["seed"] == 0 and meta["mode"] == "scratch"
    assert meta["layout"]["state_keys"] == list(Tied().state_dict())
    assert [t["name"] for t in meta["layout"]["targets"]] == ["emb.weight", "mix.weight",
                                                              "mix.bias"]


def test_a_reconstructed_tied_model_can_be_saved_as_safetensors(tmp_path):
    """reconstruct hands back the model's own tensors, but tied names get tensors of their
    own: safetensors refuses tensors that share memory (what `mcnc reconstruct -o` writes)."""
    import safetensors.torch

    path = mcnc.save(_trained("tied", CASES["tied"][1]), tmp_path / "m.mcnc")
    state = mcnc.reconstruct(path)
    safetensors.torch.save_file(state, tmp_path / "dense.safetensors")
    tied = Tied()
    tied.load_state_dict(state)
    assert torch.equal(tied.emb.weight, tied.out.weight)


# -- bad files ------------------------------------------------------------------------------
@pytest.fixture
def good(tmp_path):
    return mcnc.save(_trained("odd", CASES["scratch-odd"][1]), tmp_path / "good.mcnc")


def _load_fails(path, match):
    """Loading fails with a FormatError whose message (path removed) matches, and the
    skeleton it was loaded into is unchanged."""
    skeleton = make("odd")
    before = {k: v.clone() for k, v in skeleton.state_dict().items()}
    with pytest.raises(mcnc.FormatError) as error:
        mcnc.load(path, skeleton)
    assert re.search(match, str(error.value).replace(str(path), "FILE")), str(error.value)
    after = skeleton.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    with pytest.raises(mcnc.FormatError):
        mcnc.reconstruct(path)


@pytest.mark.parametrize("keep", [0, 5, 8, 100, -1])
def test_truncated(good, keep):
    data = good.read_bytes()
    good.write_bytes(data[:keep] if keep >= 0 else data[:-3])
    _load_fails(good, "too short|truncated|invalid|no readable|checksum")


def test_flipped_bit_in_tensor_data(good):
    data = bytearray(good.read_bytes())
    data[-5] ^= 0x10
    good.write_bytes(bytes(data))
    _load_fails(good, "checksum")


def test_flipped_bit_in_header(good):
    data = bytearray(good.read_bytes())
    at = data.index(b'"format_version')
    data[at + 3] ^= 0x01
    good.write_bytes(bytes(data))
    _load_fails(good, "format|metadata")


def _rewrite_metadata(path, edit, update_checksum=True):
    """Edit the JSON metadata of a saved file, as a buggy or hostile writer might."""
    tensors = safetensors.torch.load_file(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(json.loads(f.read(n))["__metadata__"]["mcnc"])
    edit(meta)
    if update_checksum:
        meta["metadata_sha256"] = metadata_digest(meta)
    path.write_bytes(safetensors.torch.save(tensors, metadata={"mcnc": json.dumps(meta)}))


def test_tampered_metadata_is_detected(good):
    _rewrite_metadata(good, lambda m: m["generator"].update(seed=27), update_checksum=False)
    _load_fails(good, "metadata checksum mismatch")


def test_newer_format_version(good):
    _rewrite_metadata(good, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    _load_fails(good, "upgrade mcnc")


def test_malformed_metadata(good):
    _rewrite_metadata(good, lambda m: m["generator"].update(k="sixteen"))
    _load_fails(good, "k must")


def test_not_an_mcnc_file(tmp_path):
    path = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(3)}, path)
    _load_fails(path, "no readable mcnc metadata")
    path.write_bytes(b"\x00" * 3)
    _load_fails(path, "too short")


def test_mismatched_architecture(good):
    skeleton = make("tied")
    with pytest.raises(mcnc.FormatError, match="does not fit"):
        mcnc.load(good, skeleton)
    assert "emb.weight" in dict(skeleton.named_parameters())
    wider = make("odd")
    wider.head = torch.nn.Linear(5, 4)
    with pytest.raises(mcnc.FormatError, match="shape"):
        mcnc.load(good, wider)
    other = mcnc.compress(make("odd"), mcnc.MCNCConfig(k=3, d=32, width=8))
    with pytest.raises(mcnc.FormatError, match="different method, layout"):
        mcnc.load(good, other)


def test_delta_needs_its_base(tmp_path):
    path = mcnc.save(_trained("convnet", CASES["delta"][1]), tmp_path / "d.mcnc")
    other_base = make("convnet")
    with torch.no_grad():
        other_base[0].weight.add_(1.0)
    with pytest.raises(mcnc.FormatError, match="other base weights"):
        mcnc.load(path, other_base)
    with pytest.raises(ValueError, match="base_state_dict"):
        mcnc.reconstruct(path)
    mcnc.load(path, other_base, verify_base=False)


def test_failed_save_keeps_the_previous_file(good, monkeypatch):
    before = good.read_bytes()

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(good, b"new content")
    assert good.read_bytes() == before
    assert [p.name for p in good.parent.iterdir()] == [good.name]


@pytest.mark.parametrize("method", ["mcnc", "nola"])
def test_loading_generates_the_weights_once(method, tmp_path, monkeypatch):
    """From the file's values only: not first from the initial values as well."""
    model = (mcnc.compress(make("convnet"), mcnc.MCNCConfig(d=50)) if method == "mcnc"
             else mcnc.baselines.nola(make("convnet"), mcnc.baselines.NOLAConfig(coefficients=40)))
    mcnc.save(model, tmp_path / "m.mcnc")
    cls = type(model)
    calls = []
    real = cls.generated_flat
    monkeypatch.setattr(cls, "generated_flat", lambda self: calls.append(1) or real(self))
    state = mcnc.reconstruct(tmp_path / "m.mcnc")
    assert len(calls) == 1
    loaded = mcnc.load(tmp_path / "m.mcnc", make("convnet"))
    assert len(calls) == 2
    assert all(torch.equal(state[k], v) for k, v in loaded.dense_state_dict().items())
    assert all(torch.equal(state[k], v) for k, v in model.dense_state_dict().items())
