"""Hostile files: whatever the bytes, the loaders end in ``mcnc.FormatError`` or a usable model.

Valid files of every method (and adapter folders of every adapter method) are corrupted in
four ways: raw bytes (truncation, flipped bits, garbage, absurd header lengths: caught by the
container and the checksums), and the parsed metadata, the tensors or the adapter config
rewritten with their digests recomputed, so that the structural checks behind the checksums
are what is exercised. Every case runs ``mcnc.read``, ``mcnc.load`` into a fresh skeleton and
``mcnc.reconstruct`` (``AdapterModel.load_adapter`` for adapters) and must end in a
FormatError or in finite weights, within a second and 256 MiB, leaving a skeleton whose load
failed unchanged. The cases are derandomised, so CI runs the same ones every time.

Huge integers are drawn above the documented limits (``MAX_NUMBERS``, ``MAX_WORK``): a value
below them (a target of ``2**31`` weights, say) describes a model that may legitimately be
that large, and reconstructing it costs what such a model costs.
"""

import contextlib
import functools
import gc
import json
import math
import os
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import safetensors.torch
import torch
from filebytes import join, signed_adapter, split
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from toymodels import make

import mcnc
from mcnc.adapters.files import CONFIG_NAME, WEIGHTS_NAME, read_adapter
from mcnc.apps.bench.measure import peak_extra_bytes
from mcnc.baselines import (
    LoRAConfig,
    NOLAConfig,
    PRANCConfig,
    PruningConfig,
    lora,
    nola,
    pranc,
    prune,
)
from mcnc.core import rng
from mcnc.core.generator import Generator, seeded_weights
from mcnc.core.limits import MAX_D, MAX_DEPTH, MAX_K, MAX_NUMBERS, MAX_WIDTH, MAX_WORK
from mcnc.llm.models import tiny_llama

MEMORY = 256 << 20
"""Most a case may raise the process's peak resident memory."""
WORK = {"random numbers": 1 << 24, "generator multiply-adds": 1 << 28}
"""Most work one case may do (read, load and reconstruct together): the valid files here need
a few thousand random numbers and a few hundred thousand multiply-adds, and a file that asks
for more than mcnc's limits allow must be refused before anything is regenerated. The wall
time of the slowest case is printed, not asserted: a busy machine must not fail the test."""
OUTCOMES: Counter = Counter()
"""(test, outcome) -> cases; outcome is "FormatError" or "loaded" (a mutation that left a valid
file: an unknown top-level key, a value replaced by an allowed one, a bit flipped inside an
ignored header entry)."""
WORST = {"seconds": 0.0, "bytes": 0} | dict.fromkeys(WORK, 0)


@contextlib.contextmanager
def counted(owner, name: str, counter: Counter, kind: str, amount):
    """Inside the block, every call of ``owner.name`` adds ``amount(*args)`` to
    ``counter[kind]``."""
    original = getattr(owner, name)

    def counting(*args, **kwargs):
        counter[kind] += amount(*args)
        return original(*args, **kwargs)

    setattr(owner, name, counting)
    try:
        yield
    finally:
        setattr(owner, name, original)


def measured_work(fn) -> tuple[object, Counter]:
    """``fn()`` and the work it did: the random numbers it drew (every Philox request) and the
    multiply-adds of the MCNC generator calls it made (chunks x m x generator weights)."""
    work: Counter = Counter()
    with (counted(rng, "_fill", work, "random numbers", lambda out, *_: out.shape[0]),
          counted(Generator, "combine", work, "generator multiply-adds",
                  lambda g, alpha, _: alpha.shape[0] * alpha.shape[1] * g.spec.weight_count())):
        result = fn()
    return result, work


def hostile(n: int):
    """Derandomised hypothesis settings for ``n`` cases (work and memory are checked per case)."""
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    gc.collect()
    gc.freeze()  # the per-case gc.collect of peak_extra_bytes then skips everything built so far
    yield
    gc.unfreeze()
    tests = sorted({test for test, _ in OUTCOMES})
    rows = [f"  {test:<32} {OUTCOMES[test, 'FormatError']:>5} FormatError "
            f"{OUTCOMES[test, 'loaded']:>4} loaded" for test in tests]
    total = Counter()
    for (_, outcome), n in OUTCOMES.items():
        total[outcome] += n
    line = "\n".join([
        f"hostile cases: {total.total()}, FormatError: {total['FormatError']}, loaded "
        f"harmlessly: {total['loaded']}, slowest {WORST['seconds'] * 1000:.0f} ms, largest "
        f"memory rise {WORST['bytes'] / 2**20:.1f} MiB; most work in one case: "
        + ", ".join(f"{WORST[k]:,} {k}" for k in WORK), *rows])
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n{line}")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


# -- valid files ------------------------------------------------------------------------------
def _fitted(model):
    config = mcnc.MCNCConfig(k=3, d=64, width=8)
    generator = Generator(config.generator_spec(), seeded_weights(config.generator_spec()))
    return mcnc.compress(model, config, generator=generator)


# name -> (skeleton, how to compress it)
METHODS = {
    "mcnc-scratch": ("odd", lambda m: mcnc.compress(m, mcnc.MCNCConfig(k=3, d=64, width=8))),
    "mcnc-delta": ("convnet", lambda m: mcnc.compress(
        m, mcnc.MCNCConfig(mode="delta", k=4, d=100, width=8))),
    "mcnc-lowrank": ("convnet", lambda m: mcnc.compress(
        m, mcnc.MCNCConfig(mode="lowrank", rank=2, k=4, d=100, width=8))),
    "mcnc-fitted": ("odd", _fitted),
    "pranc": ("odd", lambda m: pranc(m, PRANCConfig(coefficients=20))),
    "pranc-delta": ("odd", lambda m: pranc(m, PRANCConfig(mode="delta", coefficients=20))),
    "nola": ("odd", lambda m: nola(m, NOLAConfig(coefficients=30, rank=2))),
    "lora": ("odd", lambda m: lora(m, LoRAConfig(rank=2))),
    "pruning": ("odd", lambda m: prune(m, PruningConfig(nonzeros=50))),
}


@functools.cache
def valid_file(method: str) -> bytes:
    skeleton, build = METHODS[method]
    model = build(make(skeleton))
    with torch.no_grad():  # move the method's tensors off their initial values
        for p in model.parameters():
            p.add_(0.01)
    return mcnc.core.fileformat.to_bytes(model)


# -- running one case -------------------------------------------------------------------------
def finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v.double()).all() for v in state.values() if v.is_floating_point())


def attempt(fn) -> bool:
    """Run ``fn``: True if it worked, False on FormatError; anything else propagates."""
    try:
        fn()
    except mcnc.FormatError:
        return False
    return True


def record(fn) -> None:
    """Run one hostile case, count its outcome and check its work and memory (its wall time
    only goes into the printed summary: a busy machine must not fail the test)."""
    seconds, work = [], Counter()

    def measured():
        start = time.perf_counter()
        ok, counts = measured_work(fn)
        seconds.append(time.perf_counter() - start)
        work.update(counts)
        return ok

    ok, rise = peak_extra_bytes(measured)
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0]
    OUTCOMES[test.split("[")[0], "loaded" if ok else "FormatError"] += 1
    WORST["seconds"] = max(WORST["seconds"], seconds[0])
    WORST["bytes"] = max(WORST["bytes"], rise or 0)
    for kind, limit in WORK.items():
        WORST[kind] = max(WORST[kind], work[kind])
        assert work[kind] <= limit, f"the case did {work[kind]:,} {kind} (limit {limit:,})"
    assert rise is None or rise < MEMORY, f"the case raised memory by {rise / 2**20:.0f} MiB"


def check_file(work: Path, method: str, data: bytes) -> None:
    """read, load and reconstruct ``data``: FormatError or finite weights, and a skeleton
    whose load failed is unchanged."""
    path = work / "case.mcnc"
    path.write_bytes(data)
    name = METHODS[method][0]

    def load() -> None:
        skeleton = make(name)
        before = {k: v.clone() for k, v in skeleton.state_dict().items()}
        params = [n for n, _ in skeleton.named_parameters()]
        try:
            model = mcnc.load(path, skeleton)
        except mcnc.FormatError:
            after = skeleton.state_dict()
            assert [n for n, _ in skeleton.named_parameters()] == params
            assert after.keys() == before.keys()
            assert all(torch.equal(after[k], before[k]) for k in before)
            raise
        assert finite(model.dense_state_dict())

    def reconstruct() -> None:
        assert finite(mcnc.reconstruct(path, make(name).state_dict()))

    def run() -> bool:
        if not attempt(lambda: mcnc.read(path)):
            return False
        return all([attempt(load), attempt(reconstruct)])

    record(run)


# -- strategies -------------------------------------------------------------------------------
HUGE = st.one_of(
    st.sampled_from([MAX_NUMBERS + 1, MAX_WORK * 2, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1,
                     2**64, 2**64 + 1, 10**40, -1, -(2**63), -(2**64)]),
    st.integers(min_value=2**40, max_value=2**200),
    st.integers(max_value=-1, min_value=-(2**70)),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300), HUGE,
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1.0, 0.5, -0.0, 1e308]),
    st.text(max_size=12),
    st.sampled_from(["mcnc", "delta", "scratch", "lowrank", "reflect", "philox4x32-10",
                     "sine", "relu", "pranc", "nola", "lora", "pruning", "x" * 100_000]),
)
JSON = st.one_of(
    st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=8),
    st.integers(20, 300).map(lambda depth: functools.reduce(lambda v, _: [v], range(depth), 0)),
)


def paths(value, prefix=()) -> list[tuple]:
    """Every position inside a JSON value (dict keys and list indices), outermost first."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += paths(v, (*prefix, i))
    return found


def mutate(meta: dict, draw) -> dict:
    """Replace, delete, duplicate or add one value anywhere in (a copy of) ``meta``."""
    meta = json.loads(json.dumps(meta))
    where = draw(st.sampled_from([p for p in paths(meta) if p != ("metadata_sha256",)]))
    *outer, last = where
    parent = functools.reduce(lambda v, k: v[k], outer, meta)
    op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "duplicate", "add"]))
    if op == "replace":
        parent[last] = draw(JSON)
    elif op == "delete":
        del parent[last]
    elif op == "duplicate" and isinstance(parent, list):
        parent.insert(last, parent[last])
    else:
        target = parent if isinstance(parent, dict) else meta
        target[draw(st.text(min_size=1, max_size=8))] = draw(JSON)
    return meta


METHOD_NAMES = st.sampled_from(sorted(METHODS))


# -- raw bytes (no digest recomputed) ----------------------------------------------------------
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_class_of_truncation(work, method):
    data = valid_file(method)
    header_end = 8 + int.from_bytes(data[:8], "little")
    cuts = {0, 1, 7, 8, 9, header_end // 2, header_end - 1, header_end, header_end + 1,
            (header_end + len(data)) // 2, len(data) - 1}
    for cut in sorted(cuts):
        check_file(work, method, data[:cut])


@hostile(150)
@given(method=METHOD_NAMES, data=st.data())
def test_flipped_bits_and_bytes(work, method, data):
    raw = bytearray(valid_file(method))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw) - 1))
        if data.draw(st.booleans()):
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        else:
            raw[at] = data.draw(st.integers(0, 255))
    check_file(work, method, bytes(raw))


@hostile(60)
@given(method=METHOD_NAMES, garbage=st.binary(max_size=4096), keep=st.integers(0, 64))
def test_random_garbage(work, method, garbage, keep):
    check_file(work, method, valid_file(method)[:keep] + garbage)


@hostile(30)
@given(method=METHOD_NAMES, length=st.one_of(
    st.sampled_from([0, 1, 2**26, 2**26 + 1, 2**32, 2**63, 2**64 - 1]),
    st.integers(0, 2**64 - 1)))
def test_header_length_field(work, method, length):
    data = valid_file(method)
    check_file(work, method, length.to_bytes(8, "little") + data[8:])


@hostile(40)
@given(method=METHOD_NAMES, data=st.data())
def test_malformed_metadata_json(work, method, data):
    tensors, meta = split(valid_file(method))
    text = json.dumps(meta)
    at = data.draw(st.integers(0, len(text) - 1))
    text = text[:at] + data.draw(st.sampled_from(["", "{", "]", '"', ",", "\\", "\x00"])) + \
        text[at + data.draw(st.integers(0, 3)) :]
    check_file(work, method, safetensors.torch.save(tensors, metadata={"mcnc": text}))


# -- structure behind the digests --------------------------------------------------------------
@hostile(400)
@given(method=METHOD_NAMES, data=st.data())
def test_metadata_values(work, method, data):
    tensors, meta = split(valid_file(method))
    check_file(work, method, join(tensors, mutate(meta, data.draw)))


TENSOR_EDITS = ["dtype", "shape", "nonfinite", "drop", "extra", "empty"]


@hostile(200)
@given(method=METHOD_NAMES, data=st.data())
def test_tensor_values(work, method, data):
    tensors, meta = split(valid_file(method))
    name = data.draw(st.sampled_from(sorted(tensors)))
    t = tensors[name]
    edit = data.draw(st.sampled_from(TENSOR_EDITS))
    if edit == "dtype":
        dtype = data.draw(st.sampled_from([torch.float64, torch.float16, torch.bfloat16,
                                           torch.int8, torch.int32, torch.int64, torch.uint8,
                                           torch.bool, torch.float8_e4m3fn]))
        tensors[name] = t.to(dtype)
    elif edit == "shape":
        n = data.draw(st.integers(0, 2 * t.numel() + 2))
        tensors[name] = torch.ones(n, dtype=t.dtype).reshape(
            data.draw(st.sampled_from([(n,), (1, n), (n, 1)])))
    elif edit == "nonfinite":
        if not t.is_floating_point() or t.numel() == 0:
            t = t.float().reshape(-1)[:1] if t.numel() else torch.zeros(1)
        t = t.clone()
        t.reshape(-1)[data.draw(st.integers(0, t.numel() - 1))] = data.draw(
            st.sampled_from([math.nan, math.inf, -math.inf]))
        tensors[name] = t
    elif edit == "drop":
        del tensors[name]
    elif edit == "extra":
        tensors[data.draw(st.sampled_from([f"{name}x", "generator.99", "dense.nope",
                                           "mcnc.alpha", "pranc.coefficients"]))] = t.clone()
    else:
        tensors[name] = t.new_zeros((0, *t.shape[1:]))
    check_file(work, method, join(tensors, meta))


ABSURD = {
    "generator": [{"k": MAX_K, "d": MAX_D, "width": MAX_WIDTH, "depth": MAX_DEPTH},
                  {"width": MAX_WIDTH, "depth": MAX_DEPTH}, {"d": MAX_D, "width": MAX_WIDTH},
                  {"k": MAX_K}, {"d": MAX_D}, {"depth": MAX_DEPTH, "width": 2048}],
    "top": [{"m": 2**40}, {"coefficients": 2**40}, {"nonzeros": 2**40}, {"rank": 2**40},
            {"m": 10**6}, {"coefficients": 10**7}],
}


@hostile(60)
@given(method=METHOD_NAMES, data=st.data())
def test_absurd_sizes(work, method, data):
    tensors, meta = split(valid_file(method))
    kind = data.draw(st.sampled_from(["generator", "top", "shape", "many targets"]))
    if kind == "generator" and "generator" in meta:
        meta["generator"].update(data.draw(st.sampled_from(ABSURD["generator"])))
    elif kind in ("generator", "top"):
        meta.update(data.draw(st.sampled_from(ABSURD["top"])))
    elif kind == "shape":
        target = data.draw(st.sampled_from(meta["layout"]["targets"]))
        target["shape"] = data.draw(st.lists(st.sampled_from([1, 2**20, 2**36, 2**63]),
                                             min_size=1, max_size=4))
    else:
        # PRANC and NOLA find each bias's weight by a scan of all targets (quadratic in their
        # number: baselines.basis.init_bound), so their files get fewer extra targets
        count = data.draw(st.sampled_from([100, 300] if method.startswith(("pranc", "nola"))
                                          else [1_000, 5_000]))
        last = meta["layout"]["targets"][-1]
        offset = last["offset"] + math.prod(last["shape"])
        extra = [{"name": f"x{i}.w", "shape": [1], "offset": offset + i, "rank": None,
                  "aliases": []} for i in range(count)]
        meta["layout"]["targets"] += extra
        meta["layout"]["state_keys"] += [t["name"] for t in extra]
    check_file(work, method, join(tensors, meta))


# -- adapter folders --------------------------------------------------------------------------
ADAPTERS = {
    "mcnc": mcnc.MCNCAdapterConfig(rank=2, d=200, width=8, seed=1),
    "nola": mcnc.NOLAAdapterConfig(rank=2, coefficients=100, seed=2),
    "lora": mcnc.LoRAAdapterConfig(rank=2, seed=3),
}


def tiny() -> torch.nn.Module:
    return tiny_llama(vocab_size=64, hidden_size=16, layers=1, heads=2, kv_heads=1,
                      intermediate=24, max_positions=32)


@pytest.fixture(scope="module")
def adapter_folders(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """Method -> the two files of a saved adapter (its values moved off their start)."""
    folders = {}
    for method, config in ADAPTERS.items():
        model = mcnc.get_adapter_model(tiny(), config)
        with torch.no_grad():
            for p in model.adapters.parameters():
                p.add_(0.01)
        path = model.save_pretrained(tmp_path_factory.mktemp(method))
        folders[method] = {n: (path / n).read_bytes() for n in (CONFIG_NAME, WEIGHTS_NAME)}
    return folders


@pytest.fixture(scope="module")
def host():
    return mcnc.AdapterModel(tiny())


def write_adapter_files(folder: Path, config: dict | bytes, tensors: dict | bytes) -> None:
    """Write a folder; dict arguments get their digests recomputed (as a careful forger would)."""
    folder.mkdir(exist_ok=True)
    if isinstance(tensors, dict):
        config, tensors = signed_adapter(config, tensors)
    if isinstance(config, dict):
        config = json.dumps(config).encode()
    (folder / CONFIG_NAME).write_bytes(config)
    (folder / WEIGHTS_NAME).write_bytes(tensors)


def check_adapter(host, folder: Path) -> None:
    """load_adapter: a FormatError and an unchanged host, or a finite adapter."""
    layers = sum(1 for _ in host.modules())

    def run() -> bool:
        try:
            source = host.load_adapter(folder, adapter_name="case")
        except mcnc.FormatError:
            assert "case" not in host.adapters and sum(1 for _ in host.modules()) == layers
            return False
        try:
            with torch.no_grad():
                assert all(torch.isfinite(f).all() for f in source.factors())
        finally:
            host.delete_adapter("case")
        return True

    record(run)


def parsed(files: dict[str, bytes]) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, tensors) of an adapter folder's two files."""
    return json.loads(files[CONFIG_NAME]), safetensors.torch.load(files[WEIGHTS_NAME])


@hostile(80)
@given(method=st.sampled_from(sorted(ADAPTERS)), data=st.data())
def test_adapter_config_values(work, adapter_folders, host, method, data):
    config, tensors = parsed(adapter_folders[method])
    write_adapter_files(work / "adapter", mutate(config, data.draw), tensors)
    check_adapter(host, work / "adapter")


@hostile(50)
@given(method=st.sampled_from(sorted(ADAPTERS)), data=st.data())
def test_adapter_tensors(work, adapter_folders, host, method, data):
    config, tensors = parsed(adapter_folders[method])
    name = data.draw(st.sampled_from(sorted(tensors)))
    edit = data.draw(st.sampled_from(["dtype", "shape", "nonfinite", "drop", "extra"]))
    t = tensors[name]
    if edit == "dtype":
        tensors[name] = t.to(data.draw(st.sampled_from([torch.float64, torch.int32,
                                                        torch.bool, torch.float16])))
    elif edit == "shape":
        tensors[name] = torch.ones(data.draw(st.integers(0, 2 * t.numel() + 2)))
    elif edit == "nonfinite":
        t = t.clone()
        t.reshape(-1)[data.draw(st.integers(0, t.numel() - 1))] = math.nan
        tensors[name] = t
    elif edit == "drop":
        del tensors[name]
    else:
        tensors[f"{name}.extra"] = t.clone()
    write_adapter_files(work / "adapter", config, tensors)
    check_adapter(host, work / "adapter")


@hostile(50)
@given(method=st.sampled_from(sorted(ADAPTERS)), data=st.data())
def test_adapter_raw_bytes(work, adapter_folders, host, method, data):
    files = dict(adapter_folders[method])
    which = data.draw(st.sampled_from([CONFIG_NAME, WEIGHTS_NAME]))
    raw = bytearray(files[which])
    how = data.draw(st.sampled_from(["truncate", "flip", "garbage"]))
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    else:
        raw = bytearray(data.draw(st.binary(max_size=512)))
    files[which] = bytes(raw)
    write_adapter_files(work / "adapter", files[CONFIG_NAME], files[WEIGHTS_NAME])
    check_adapter(host, work / "adapter")


# -- one regression test per gap found in review ----------------------------------------------
def rewritten(work: Path, method: str, edit) -> Path:
    tensors, meta = split(valid_file(method))
    edit(tensors, meta)
    path = work / f"{method}-edited.mcnc"
    path.write_bytes(join(tensors, meta))
    return path


def refused(path: Path, match: str, skeleton: str = "odd") -> None:
    """read, load and reconstruct all raise a FormatError matching ``match``."""
    for call in (lambda: mcnc.read(path), lambda: mcnc.load(path, make(skeleton)),
                 lambda: mcnc.reconstruct(path, make(skeleton).state_dict())):
        with pytest.raises(mcnc.FormatError, match=match):
            call()


@pytest.mark.parametrize("seed", [2**64, -1, True, 1.0, "0"])
def test_pranc_seed_must_be_an_integer_in_range(work, seed):
    path = rewritten(work, "pranc", lambda t, m: m.update(seed=seed))
    refused(path, "seed must be an integer")


@pytest.mark.parametrize("method", ["lora", "nola"])
def test_boolean_seed_is_refused(work, method):
    refused(rewritten(work, method, lambda t, m: m.update(seed=True)), "seed")


def test_negative_target_shape_is_refused(work):
    def edit(tensors, meta):
        meta["layout"]["targets"][-1]["shape"] = [-5, -6]

    refused(rewritten(work, "pranc", edit), "shape must be a list of positive integers")


def test_duplicate_dense_keys_are_refused(work):
    def edit(tensors, meta):
        meta["dense"].append(meta["dense"][0])

    refused(rewritten(work, "mcnc-scratch", edit), "twice")


@pytest.mark.parametrize("version", [True, 1.0, "1", [1]])
def test_format_version_must_be_the_integer_1(work, version):
    refused(rewritten(work, "lora", lambda t, m: m.update(format_version=version)),
            "format version")


@pytest.mark.parametrize("fitted", ["no", 0, 1, None])
def test_generator_fitted_must_be_a_boolean(work, fitted):
    refused(rewritten(work, "mcnc-scratch", lambda t, m: m["generator"].update(fitted=fitted)),
            "fitted must be true or false")


def saved_adapter(folder: Path, method: str = "mcnc") -> Path:
    mcnc.get_adapter_model(tiny(), ADAPTERS[method]).save_pretrained(folder)
    return folder


def test_edited_adapter_config_is_detected(work):
    folder = saved_adapter(work / "edited")
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["scaling"] = 2.0  # a valid value: only the digest can tell
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(mcnc.FormatError, match="adapter digest differs"):
        mcnc.AdapterModel.from_pretrained(tiny(), folder)


def test_tensors_of_another_adapter_with_the_same_config_are_detected(work):
    """Two adapters of one config differ only in their tensors: swapping the tensor files
    must not load silently."""
    first, second = saved_adapter(work / "first"), work / "second"
    model = mcnc.get_adapter_model(tiny(), ADAPTERS["mcnc"])
    with torch.no_grad():
        model.adapters["default"].beta.add_(0.01)
    model.save_pretrained(second)
    configs = [json.loads((f / CONFIG_NAME).read_text()) for f in (first, second)]
    assert [c.pop("adapter_sha256") for c in configs] and configs[0] == configs[1]
    (first / WEIGHTS_NAME).write_bytes((second / WEIGHTS_NAME).read_bytes())
    with pytest.raises(mcnc.FormatError, match="do not belong together"):
        read_adapter(first)


@pytest.mark.parametrize(("key", "value"), [("rank", True), ("scaling", True),
                                            ("dropout", False), ("seed", 1.0),
                                            ("scaling", math.nan), ("target_modules", 3),
                                            ("k", 2**64), ("m", -1)])
def test_adapter_config_types_are_strict(work, key, value):
    folder = saved_adapter(work / f"types-{key}")
    config = json.loads((folder / CONFIG_NAME).read_text())
    config[key] = value
    tensors = safetensors.torch.load((folder / WEIGHTS_NAME).read_bytes())
    write_adapter_files(folder, config, tensors)
    with pytest.raises(mcnc.FormatError):
        read_adapter(folder)


def test_version_3_folders_with_or_without_a_config_digest_still_load(work):
    """Version 3 kept a payload digest in the config and (in its later folders) the config's
    digest in the tensor file; a version-4 config must hold its one digest."""
    folder = saved_adapter(work / "old", "nola")
    config = json.loads((folder / CONFIG_NAME).read_text())
    tensors = safetensors.torch.load((folder / WEIGHTS_NAME).read_bytes())
    write_adapter_files(folder, {**config, "format_version": 3}, tensors)
    mcnc.AdapterModel.from_pretrained(tiny(), folder)
    (folder / WEIGHTS_NAME).write_bytes(safetensors.torch.save(tensors,
                                                               {"format": "mcnc-adapter"}))
    mcnc.AdapterModel.from_pretrained(tiny(), folder)
    unsigned = {k: v for k, v in config.items() if k != "adapter_sha256"}
    write_adapter_files(folder, unsigned, safetensors.torch.save(tensors))
    with pytest.raises(mcnc.FormatError, match="adapter digest differs"):
        read_adapter(folder)


def test_committed_adapter_folders_still_read():
    folders = sorted((Path(__file__).parents[1] / "results" / "finetune").glob("*/adapter"))
    if not folders:
        pytest.skip("no results/finetune/*/adapter folders in this checkout")
    for folder in folders:
        read_adapter(folder)


@pytest.mark.parametrize(("method", "tensor"), [
    ("mcnc-scratch", "mcnc.alpha"), ("mcnc-scratch", "mcnc.beta"),
    ("pranc", "pranc.coefficients"), ("lora", "lora.factors"), ("pruning", "pruning.values"),
    ("mcnc-fitted", "generator.0"), ("mcnc-scratch", "dense.norm.weight")])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_tensors_are_refused_by_name(work, method, tensor, value):
    def edit(tensors, meta):
        tensors[tensor] = tensors[tensor].clone()
        tensors[tensor].reshape(-1)[0] = value

    refused(rewritten(work, method, edit), re.escape(f"tensor '{tensor}' holds NaN or infinite"))


def test_adapter_non_finite_tensor_is_refused(work):
    folder = saved_adapter(work / "nan", "lora")
    tensors = safetensors.torch.load((folder / WEIGHTS_NAME).read_bytes())
    tensors["lora.A"][0] = math.nan
    write_adapter_files(folder, json.loads((folder / CONFIG_NAME).read_text()), tensors)
    with pytest.raises(mcnc.FormatError, match=r"lora\.A"):
        read_adapter(folder)


def test_generator_at_its_limits_is_refused(work):
    def edit(tensors, meta):
        meta["generator"].update(k=MAX_K, d=MAX_D, width=MAX_WIDTH, depth=MAX_DEPTH)

    refused(rewritten(work, "mcnc-scratch", edit), "weights")
    with pytest.raises(ValueError, match="weights"):
        mcnc.GeneratorSpec(d=MAX_D, width=MAX_WIDTH)


def test_pranc_regeneration_work_is_limited(work):
    def edit(tensors, meta):
        target = meta["layout"]["targets"][-1]
        target["shape"] = [MAX_WORK // 20 + 1]  # x 20 coefficients: just above the limit

    refused(rewritten(work, "pranc", edit), "random numbers")


def test_mcnc_chunks_must_match_alpha(work):
    def edit(tensors, meta):
        meta["layout"]["targets"][-1]["shape"] = [2**30]  # more chunks than alpha holds

    refused(rewritten(work, "mcnc-scratch", edit), "shape")


def test_huge_layout_is_refused(work):
    def edit(tensors, meta):
        meta["layout"]["targets"][-1]["shape"] = [2**20, 2**20]

    refused(rewritten(work, "pruning", edit), "weights")


def test_nola_needs_a_coefficient_per_piece(work):
    def edit(tensors, meta):
        meta["coefficients"] = 3
        tensors["nola.coefficients"] = tensors["nola.coefficients"][:3].clone()

    skeleton = make("odd")
    names = [n for n, _ in skeleton.named_parameters()]
    path = rewritten(work, "nola", edit)
    refused(path, "cannot cover")
    with pytest.raises(mcnc.FormatError):
        mcnc.load(path, skeleton)
    assert [n for n, _ in skeleton.named_parameters()] == names


def test_errors_while_building_name_the_file(work):
    def edit(tensors, meta):
        # a state key that cannot be a module attribute: only building the skeleton notices
        meta["layout"]["state_keys"] = [k.replace("norm.bias", "norm.training")
                                        for k in meta["layout"]["state_keys"]]
        meta["dense"] = sorted(k.replace("norm.bias", "norm.training") for k in meta["dense"])
        tensors["dense.norm.training"] = tensors.pop("dense.norm.bias")

    path = rewritten(work, "mcnc-scratch", edit)
    mcnc.read(path)
    with pytest.raises(mcnc.FormatError, match=re.escape(str(path))):
        mcnc.reconstruct(path)
    with pytest.raises(mcnc.FormatError, match="does not fit"):
        mcnc.load(path, make("odd"))


def test_deeply_nested_metadata(work):
    text = "[" * 100_000 + "]" * 100_000
    path = work / "deep.mcnc"
    path.write_bytes(safetensors.torch.save({"w": torch.zeros(1)}, metadata={"mcnc": text}))
    refused(path, "metadata")
    folder = saved_adapter(work / "deep-adapter", "lora")
    (folder / CONFIG_NAME).write_text(text)
    with pytest.raises(mcnc.FormatError, match="JSON"):
        read_adapter(folder)
    shutil.rmtree(folder)
