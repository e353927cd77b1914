"""docs/format.md against the code: every test vector and every metadata key table.

The specification is what an independent reader of our files is written from. Each fenced
block marked ``json test-vector`` in it is recomputed here with the code, and the key tables
are compared with the metadata of freshly written files, so a change of either the code or
the document that alters what a file means makes this test fail.
"""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mcnc
from mcnc.adapters.config import UNWRITTEN_AT_DEFAULT
from mcnc.adapters.files import adapter_digest
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
from mcnc.baselines.basis import RandomBasis
from mcnc.baselines.subspace import split_coefficients
from mcnc.compress import MCNCModel
from mcnc.core import rng
from mcnc.core.fileformat import FORMAT_VERSION, MAX_HEADER_BYTES, metadata_digest, tensor_digest
from mcnc.core.generator import Generator, GeneratorSpec, fold_into_cube, seeded_weights
from mcnc.core.initialisation import element_std, seeded_init
from mcnc.core.layout import Layout, materialize
from mcnc.core.limits import MAX_D, MAX_DEPTH, MAX_K, MAX_WIDTH
from mcnc.core.mixing import SeededMixing

DOC = Path(__file__).parents[1] / "docs" / "format.md"
TEXT = DOC.read_text(encoding="utf-8")
VECTORS = [json.loads(block) for block in
           re.findall(r"^```json test-vector\n(.*?)^```$", TEXT, flags=re.M | re.S)]
TOP_LEVEL = "### 3.1 Top-level metadata keys"
ADAPTER_KEYS = "### 7.1 Keys of `adapter_config.json`"
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I32": torch.int32, "I64": torch.int64}


# -- helpers ----------------------------------------------------------------------------------
def hex_words(words) -> np.ndarray:
    return np.array([int(w, 16) for w in words], dtype=np.uint32)


def float32_bits(values) -> list[str]:
    flat = np.ascontiguousarray(np.asarray(values, dtype=np.float32)).reshape(-1)
    return [f"0x{int(w):08x}" for w in flat.view(np.uint32)]


def close(actual: torch.Tensor, expected, v: dict) -> None:
    expected = torch.tensor(expected, dtype=torch.float32)
    torch.testing.assert_close(actual.reshape(expected.shape), expected, rtol=v["rtol"],
                               atol=v["atol"])


def spec_of(v: dict) -> GeneratorSpec:
    return GeneratorSpec(**v["spec"])


def table(heading: str) -> list[list[str]]:
    """Body rows (cells stripped) of the first table after ``heading``."""
    assert f"\n{heading}\n" in TEXT, f"docs/format.md has no heading {heading!r}"
    lines = []
    for line in TEXT.split(f"\n{heading}\n", 1)[1].splitlines():
        if line.startswith("|"):
            lines.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif lines:
            break
    return lines[2:]


def keys(heading: str, method: str | None = None) -> set[str]:
    """Backticked names of the table's first column; with ``method``, the rows whose second
    column is ``all`` or names the method."""
    found = set()
    for row in table(heading):
        name = re.fullmatch(r"`([^`]+)`", row[0])
        assert name, f"first cell {row[0]!r} under {heading!r} is not a `key`"
        methods = [m.strip() for m in row[1].split(",")] if method else []
        if method is None or "all" in methods or method in methods:
            found.add(name.group(1))
    return found


# -- test vectors -----------------------------------------------------------------------------
def check_philox_words(v: dict) -> None:
    expected = hex_words(v["words"])
    args = (v["seed"], v["stream"], v["start"], len(expected))
    np.testing.assert_array_equal(rng.reference_words(*args), expected)
    np.testing.assert_array_equal(rng.random_words(*args, backend="numpy"), expected)


def check_uniform(v: dict) -> None:
    assert float.fromhex(v["bound_hex"]) == v["bound"]
    check_philox_words(v)
    n = len(v["float32_bits"])
    ref = rng.reference_uniform(v["seed"], v["stream"], (n,), v["bound"], v["start"])
    fast = rng.uniform(v["seed"], v["stream"], (n,), v["bound"], v["start"], backend="numpy")
    assert float32_bits(ref) == v["float32_bits"]
    assert float32_bits(fast) == v["float32_bits"]
    assert float32_bits(v["values"]) == v["float32_bits"]


def check_word_to_float(v: dict) -> None:
    assert float.fromhex(v["bound_hex"]) == v["bound"]
    unit = rng.words_to_unit(hex_words(v["words"]))
    assert [float(u).hex() for u in unit] == v["unit_hex"]
    values = (np.float64(v["bound"]) * (2.0 * unit - 1.0)).astype(np.float32)
    assert float32_bits(values) == v["float32_bits"]
    assert float32_bits(v["values"]) == v["float32_bits"]


def check_generator_weights(v: dict) -> None:
    spec = spec_of(v)
    weights = seeded_weights(spec)
    assert len(weights) == len(v["tensors"]) == 2 * spec.depth + 1
    for w, t in zip(weights, v["tensors"], strict=True):
        assert list(w.shape) == t["shape"] and float.fromhex(t["bound_hex"]) == t["bound"]
        again = rng.uniform(spec.seed, t["stream"], tuple(t["shape"]), t["bound"])
        assert torch.equal(again, w), "the stream or bound the document gives is wrong"
        first = t["first_float32_bits"]
        assert float32_bits(w.reshape(-1)[: len(first)]) == first


def check_generator_output(v: dict) -> None:
    with torch.no_grad():
        phi = Generator(spec_of(v))(torch.tensor(v["alpha"], dtype=torch.float32))
    close(phi, v["phi"], v)


def check_fold(v: dict) -> None:
    folded = fold_into_cube(torch.tensor(v["alpha"], dtype=torch.float32), v["L"])
    assert folded.tolist() == v["folded"]


def check_mcnc_chunks(v: dict) -> None:
    alpha, beta = torch.tensor(v["alpha"]), torch.tensor(v["beta"])
    assert alpha.shape[1] == beta.shape[1] == v["m"]
    with torch.no_grad():
        chunks = Generator(spec_of(v)).chunks(alpha, beta).reshape(-1)
    close(chunks, v["chunks"], v)


def check_mixing(v: dict) -> None:
    mixing = SeededMixing(len(v["x"]), v["total"], v["seed"])
    assert mixing.signs.tolist() == v["signs"]
    assert mixing.order.tolist() == v["order"]
    close(mixing(torch.tensor(v["x"])), v["y"], v)


def check_materialize(v: dict) -> None:
    out = materialize(Layout.from_dict(v["layout"]), torch.tensor(v["flat"]))
    assert list(out) == list(v["tensors"])
    for name, t in v["tensors"].items():
        assert list(out[name].shape) == t["shape"]
        assert out[name].reshape(-1).tolist() == t["values"]


def check_nola_split(v: dict) -> None:
    assert split_coefficients(v["sizes"], v["coefficients"]) == v["counts"]


def check_basis_product(v: dict) -> None:
    assert v["stream"] == rng.PRANC_BASIS_STREAM
    c = torch.tensor(v["coefficients"])
    basis = RandomBasis(v["seed"], v["stream"], v["size"], len(c), torch.tensor(v["std"]))
    with torch.no_grad():
        close(basis.apply(c), v["v"], v)


def check_seeded_init(v: dict) -> None:
    assert v["stream"] == rng.THETA0_STREAM
    layout = Layout.from_dict(v["layout"])
    assert float32_bits(element_std(layout)) == v["std_float32_bits"]
    assert float32_bits(seeded_init(layout, v["seed"], v["stream"])) == v["float32_bits"]


def documented_payload_digest(entries: list[dict]) -> str:
    """The procedure of section 8.1, written out from the text."""
    names = {"F32": "torch.float32", "F16": "torch.float16", "BF16": "torch.bfloat16",
             "I32": "torch.int32", "I64": "torch.int64"}
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e["name"]):
        shape = "[" + ", ".join(str(s) for s in e["shape"]) + "]"
        h.update(f"{e['name']}|{names[e['dtype']]}|{shape}|".encode())
        h.update(bytes.fromhex(e["data_hex"]))
    return h.hexdigest()


def check_payload_digest(v: dict) -> None:
    tensors = {e["name"]: torch.frombuffer(bytearray.fromhex(e["data_hex"]),
                                           dtype=DTYPES[e["dtype"]]).reshape(e["shape"])
               for e in v["tensors"]}
    assert tensor_digest(tensors) == v["sha256"]
    assert documented_payload_digest(v["tensors"]) == v["sha256"]


def check_adapter_digest(v: dict) -> None:
    tensors = {e["name"]: torch.frombuffer(bytearray.fromhex(e["data_hex"]),
                                           dtype=DTYPES[e["dtype"]]).reshape(e["shape"])
               for e in v["tensors"]}
    rest = {k: x for k, x in v["config"].items() if k != "adapter_sha256"}
    assert v["text"] == json.dumps(rest, sort_keys=True) + "\n" + tensor_digest(tensors)
    assert hashlib.sha256(v["text"].encode("utf-8")).hexdigest() == v["sha256"]
    assert adapter_digest(v["config"], tensors) == v["sha256"]


def check_metadata_digest(v: dict) -> None:
    rest = {k: x for k, x in v["metadata"].items() if k != "metadata_sha256"}
    assert json.dumps(rest, sort_keys=True) == v["canonical"]
    assert hashlib.sha256(v["canonical"].encode("utf-8")).hexdigest() == v["sha256"]
    assert metadata_digest(v["metadata"]) == v["sha256"]


CHECKS = {
    "adapter-digest": check_adapter_digest,
    "philox-words": check_philox_words,
    "uniform": check_uniform,
    "word-to-float": check_word_to_float,
    "generator-weights": check_generator_weights,
    "generator-output": check_generator_output,
    "fold": check_fold,
    "mcnc-chunks": check_mcnc_chunks,
    "mixing": check_mixing,
    "materialize": check_materialize,
    "nola-split": check_nola_split,
    "basis-product": check_basis_product,
    "seeded-init": check_seeded_init,
    "payload-digest": check_payload_digest,
    "metadata-digest": check_metadata_digest,
}


def test_the_document_has_every_kind_of_vector():
    assert len(VECTORS) >= 6
    assert {v["kind"] for v in VECTORS} == set(CHECKS)


@pytest.mark.parametrize("vector", VECTORS, ids=[f"{i}-{v['kind']}"
                                                for i, v in enumerate(VECTORS)])
def test_vector(vector):
    CHECKS[vector["kind"]](vector)


def test_constants_quoted_in_the_text():
    for value in [rng._M0, rng._M1, rng._W0, rng._W1]:
        assert f"`0x{int(value):08X}" in TEXT, f"0x{int(value):08X} is not in the document"
    assert rng.ROUNDS == 10 and rng.PRNG_NAME == "philox4x32-10"
    assert f"`format_version = {FORMAT_VERSION}`" in TEXT
    assert MAX_HEADER_BYTES == 64 << 20 and MAX_D == 2**20
    for name, limit in [("k", MAX_K), ("width", MAX_WIDTH), ("depth", MAX_DEPTH)]:
        assert f"`1 <= {name} <= {limit}`" in TEXT


# -- key tables against real files ------------------------------------------------------------
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))


BUILDERS = {
    "mcnc": lambda m: mcnc.compress(m, mcnc.MCNCConfig(k=2, d=16, width=4, depth=1,
                                                       mixing="none")),
    "pranc": lambda m: pranc(m, PRANCConfig(coefficients=4)),
    "nola": lambda m: nola(m, NOLAConfig(coefficients=8, rank=1)),
    "lora": lambda m: lora(m, LoRAConfig(rank=1)),
    "pruning": lambda m: prune(m, PruningConfig(nonzeros=5)),
}


@pytest.mark.parametrize("method", BUILDERS)
def test_metadata_tables_list_the_keys_of_a_real_file(method, tmp_path):
    path = mcnc.save(BUILDERS[method](tiny_model()), tmp_path / "model.mcnc")
    tensors, meta = mcnc.read(path)
    assert meta["method"] == method
    assert set(meta) == keys(TOP_LEVEL, method)
    assert set(meta["layout"]) == keys("### 3.3 Keys of `layout`")
    for target in meta["layout"]["targets"]:
        assert set(target) == keys("### 3.4 Keys of a layout target")
    if method == "mcnc":
        assert set(meta["generator"]) == keys("### 3.2 Keys of `generator`")
    documented = keys("### 2.1 Tensors of a `.mcnc` file")
    assert {n for n in tensors if not n.startswith("dense.")} <= documented


def test_version_2_adds_the_mixing(tmp_path):
    assert keys(TOP_LEVEL, "mcnc (version 2)") - keys(TOP_LEVEL, "mcnc") == {"mixing"}
    mixed = mcnc.compress(tiny_model(), mcnc.MCNCConfig(k=2, d=16, width=4, depth=1,
                                                        mixing="hadamard"))
    meta = mcnc.read(mcnc.save(mixed, tmp_path / "mixed.mcnc"))[1]
    assert meta["format_version"] == 2
    assert set(meta) == keys(TOP_LEVEL, "mcnc") | {"mixing"}


def test_a_linear_generator_is_version_2_and_round_trips(tmp_path):
    config = mcnc.MCNCConfig(k=2, d=16, width=4, depth=1, mixing="none", activation="linear")
    model = mcnc.compress(tiny_model(), config)
    path = mcnc.save(model, tmp_path / "linear.mcnc")
    meta = mcnc.read(path)[1]
    assert meta["format_version"] == 2 and meta["generator"]["activation"] == "linear"
    assert set(meta) == keys(TOP_LEVEL, "mcnc")
    x = torch.randn(3, 6)
    assert torch.equal(mcnc.load(path, tiny_model())(x), model(x))
    meta["format_version"] = 1  # a version-1 reader would refuse the activation
    with pytest.raises(mcnc.FormatError, match="linear generator"):
        MCNCModel.config_from_file(meta)


ADAPTERS = {
    "mcnc": mcnc.MCNCAdapterConfig(rank=1, k=2, d=4, width=3, target_modules=["0"]),
    "nola": mcnc.NOLAAdapterConfig(rank=1, coefficients=4, target_modules=["0"]),
    "lora": mcnc.LoRAAdapterConfig(rank=1, target_modules=["0"]),
}


@pytest.mark.parametrize("method", ADAPTERS)
def test_adapter_table_lists_the_keys_of_a_real_config(method, tmp_path):
    base = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    mcnc.get_adapter_model(base, ADAPTERS[method]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["method"] == method
    optional = set(UNWRITTEN_AT_DEFAULT) if method == "mcnc" else set()  # written when set
    assert set(config) == keys(ADAPTER_KEYS, method) - optional


def test_stream_table_matches_rng():
    section = TEXT.split("### 4.4 Which stream draws what", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (.+?) \| `0x([0-9A-F]{8})` \|$", section, flags=re.M)
    assert {name: int(value, 16) for name, value in rows} == rng.STREAMS
    assert len(set(rng.STREAMS.values())) == len(rng.STREAMS)
