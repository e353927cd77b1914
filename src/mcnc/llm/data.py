"""Instruction-style question/answer data for fine-tuning causal language models, offline.

The pairs come from the English YAML files of the ``chatterbot-corpus`` pip package
(``<package dir>/data/english/*.yml``; the package is located, never imported). Each file
holds ``conversations:``, lists of turns; every two consecutive turns give one
(question, answer) pair. :func:`read_qa_corpus` cleans them and counts what it dropped:

==============  ================================================================
reason          dropped
==============  ================================================================
not_a_list      conversations that are a single string instead of a list of turns
non_string      pairs with a turn that YAML did not read as text (number, bool, ...)
empty           pairs with a question or answer that is blank
too_long        pairs with a question or answer longer than ``max_chars`` characters
duplicate       exact repeats of an earlier (question, answer) pair
==============  ================================================================

The rest of the pipeline: :func:`split_pairs` (train/validation, no question in both),
:func:`tokenize_pairs` (chat template, loss on the answer only), :func:`batches` (shuffled
per epoch, one disjoint share per data-parallel rank) and :func:`collate` (right padding).
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import yaml

from mcnc.data.errors import DataCorruptError, DataNotFoundError

__all__ = ["DROP_REASONS", "IGNORE_INDEX", "INSTALL_HINT", "MAX_CHARS", "QACorpus", "batches",
           "batches_per_epoch", "collate", "corpus_dir", "count_tokens", "length_stats",
           "load_qa_pairs", "read_qa_corpus", "split_pairs", "tokenize_pairs"]

CORPUS_PACKAGE = "chatterbot_corpus"
INSTALL_HINT = "pip install --no-deps chatterbot-corpus"
IGNORE_INDEX = -100
"""Label of tokens that the loss skips (prompt and padding), as in ``torch.nn.CrossEntropyLoss``."""
MAX_CHARS = 400
"""Default limit on the length of a question or answer, in characters (a few very long
answers hold whole programs, which would be cut off at 128 tokens anyway)."""
DROP_REASONS: tuple[str, ...] = ("not_a_list", "non_string", "empty", "too_long", "duplicate")

_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""The safe YAML loader (the same as ``yaml.safe_load``), compiled when available."""

Pair = tuple[str, str]
Example = dict[str, list[int]]


@dataclass(frozen=True)
class QACorpus:
    """Cleaned (question, answer) pairs and what was dropped on the way.

    Attributes:
        pairs: the pairs, in file-name order, then in file order.
        dropped: count per reason of :data:`DROP_REASONS` (``not_a_list`` counts
            conversations, the others count pairs).
        files: names of the YAML files read.
        raw_pairs: number of pairs before cleaning (consecutive turns of list conversations).
    """

    pairs: tuple[Pair, ...]
    dropped: Mapping[str, int] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    raw_pairs: int = 0


def corpus_dir(language: str = "english") -> Path:
    """Directory of the ``chatterbot-corpus`` YAML files of ``language``.

    Raises:
        DataNotFoundError: the package is not installed or has no such directory.
    """
    spec = importlib.util.find_spec(CORPUS_PACKAGE)
    if spec is None or spec.origin is None:
        raise DataNotFoundError(
            f"Q/A corpus not found: the 'chatterbot-corpus' package is not installed. "
            f"Run `{INSTALL_HINT}`.")
    directory = Path(os.path.dirname(spec.origin)) / "data" / language
    if not directory.is_dir():
        raise DataNotFoundError(
            f"Q/A corpus not found: {directory} does not exist. Reinstall the package with "
            f"`{INSTALL_HINT} --force-reinstall`.")
    return directory


def _conversations(path: Path) -> list[Any]:
    """The ``conversations`` list of one YAML file.

    Raises:
        DataCorruptError: the file is not valid YAML or has no ``conversations`` list.
    """
    try:
        with open(path, encoding="utf-8") as f:
            content = yaml.load(f, Loader=_SAFE_LOADER)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataCorruptError(
            f"{path} is not valid UTF-8 YAML ({e}). Reinstall the package with "
            f"`{INSTALL_HINT} --force-reinstall`.") from e
    conversations = content.get("conversations") if isinstance(content, dict) else None
    if not isinstance(conversations, list):
        raise DataCorruptError(
            f"{path} has no 'conversations:' list. Reinstall the package with "
            f"`{INSTALL_HINT} --force-reinstall`, or remove the file from the directory.")
    return conversations


def read_qa_corpus(root: str | os.PathLike | None = None, max_chars: int = MAX_CHARS) -> QACorpus:
    """Read and clean the (question, answer) pairs of every ``*.yml`` file in ``root``.

    Args:
        root: directory of chatterbot-corpus style YAML files; ``None`` uses
            :func:`corpus_dir` (the English files of the installed package).
        max_chars: drop pairs whose stripped question or answer is longer than this.

    Returns:
        A :class:`QACorpus`, the same on every call (files are read in sorted order). The
        result is cached per process by directory and ``max_chars``.

    Raises:
        DataNotFoundError: the package, the directory or its ``*.yml`` files are missing.
        DataCorruptError: a file is not valid YAML or has no ``conversations`` list.
    """
    directory = corpus_dir() if root is None else Path(root)
    return _read_qa_corpus(str(directory), max_chars)


@functools.lru_cache(maxsize=8)
def _read_qa_corpus(directory: str, max_chars: int) -> QACorpus:
    """:func:`read_qa_corpus` for a resolved directory, cached per process."""
    paths = sorted(Path(directory).glob("*.yml")) if Path(directory).is_dir() else []
    if not paths:
        raise DataNotFoundError(
            f"Q/A corpus files (*.yml) not found in {directory}. Run `{INSTALL_HINT}` or pass "
            f"root=<directory with chatterbot-corpus YAML files>.")
    dropped = dict.fromkeys(DROP_REASONS, 0)
    seen: set[Pair] = set()
    pairs: list[Pair] = []
    raw = 0
    for path in paths:
        for conversation in _conversations(path):
            if not isinstance(conversation, list):
                dropped["not_a_list"] += 1
                continue
            for question, answer in itertools.pairwise(conversation):
                raw += 1
                if not isinstance(question, str) or not isinstance(answer, str):
                    dropped["non_string"] += 1
                    continue
                pair = (question.strip(), answer.strip())
                if not pair[0] or not pair[1]:
                    dropped["empty"] += 1
                elif max(len(pair[0]), len(pair[1])) > max_chars:
                    dropped["too_long"] += 1
                elif pair in seen:
                    dropped["duplicate"] += 1
                else:
                    seen.add(pair)
                    pairs.append(pair)
    return QACorpus(tuple(pairs), MappingProxyType(dropped), tuple(p.name for p in paths), raw)


def load_qa_pairs(root: str | os.PathLike | None = None, max_chars: int = MAX_CHARS) -> list[Pair]:
    """The cleaned (question, answer) pairs of :func:`read_qa_corpus`, in a fixed order.

    Raises:
        DataNotFoundError: ``chatterbot-corpus`` is not installed (run
            ``pip install --no-deps chatterbot-corpus``) or ``root`` holds no ``*.yml`` files.
        DataCorruptError: a file is not valid YAML or has no ``conversations`` list.
    """
    return list(read_qa_corpus(root, max_chars).pairs)


def split_pairs(pairs: Sequence[Pair], val_fraction: float = 0.1,
                seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Split pairs into training and validation sets, deterministically from ``seed``.

    Whole questions are assigned to one side (a question with several answers never appears
    in both), so the validation set holds about ``val_fraction`` of the pairs: questions are
    taken in a seeded random order until that many pairs are reached. Both lists keep the
    input order.

    Raises:
        ValueError: ``val_fraction`` is not in [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    questions = list(dict.fromkeys(q for q, _ in pairs))
    count: dict[str, int] = {}
    for q, _ in pairs:
        count[q] = count.get(q, 0) + 1
    target = round(len(pairs) * val_fraction)
    order = torch.randperm(len(questions), generator=torch.Generator().manual_seed(seed))
    val_questions: set[str] = set()
    taken = 0
    for i in order.tolist():
        if taken >= target:
            break
        val_questions.add(questions[i])
        taken += count[questions[i]]
    train = [p for p in pairs if p[0] not in val_questions]
    val = [p for p in pairs if p[0] in val_questions]
    return train, val


def chat_texts(tokenizer: Any, history: list[dict], answer: str) -> tuple[str, str]:
    """``(prompt, completion)`` text of a chat in the tokenizer's chat template: the prompt is
    ``history`` (messages ``{"role", "content"}``) ending with the assistant header, the
    completion is ``answer`` up to and including the end-of-turn token (anything the template
    adds after it is left out)."""
    prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [*history, {"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the tokenizer's chat template does not render the conversation as "
                         "the generation prompt followed by the answer; cannot mask the prompt")
    completion = full[len(prompt):]
    end = tokenizer.eos_token
    if end and end in completion:
        completion = completion[:completion.rindex(end) + len(end)]
    return prompt, completion


def examples_from_texts(texts: Sequence[tuple[str, str]], tokenizer: Any,
                        max_length: int) -> list[Example]:
    """Examples ``{"input_ids", "labels"}`` from ``(prompt, target)`` texts: labels are
    :data:`IGNORE_INDEX` on the prompt and the token ids on the target; cut to ``max_length``
    tokens from the end; an example with no target token left is dropped."""
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    if not texts:
        return []
    prompts = tokenizer([p for p, _ in texts], add_special_tokens=False)["input_ids"]
    targets = tokenizer([t for _, t in texts], add_special_tokens=False)["input_ids"]
    examples: list[Example] = []
    for prompt, target in zip(prompts, targets, strict=True):
        ids = (list(prompt) + list(target))[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt) + list(target))[:max_length]
        if any(label != IGNORE_INDEX for label in labels):
            examples.append({"input_ids": ids, "labels": labels})
    return examples


def tokenize_pairs(pairs: Sequence[Pair], tokenizer: Any, max_length: int = 128,
                   system_prompt: str | None = None) -> list[Example]:
    """Tokenize (question, answer) pairs as one user turn and one assistant turn of the
    tokenizer's chat template (:func:`examples_from_texts`): the loss covers the answer and
    its end-of-turn token only. Examples with no answer token left after the cut to
    ``max_length`` are dropped, so the result may be shorter than ``pairs``.

    Args:
        pairs: (question, answer) pairs.
        tokenizer: a Hugging Face tokenizer with a chat template.
        max_length: maximum number of tokens per example.
        system_prompt: system message; ``None`` keeps the template's default (SmolLM2's
            template then adds its own one-line system prompt).
    """
    system = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    texts = [chat_texts(tokenizer, [*system, {"role": "user", "content": q}], a)
             for q, a in pairs]
    return examples_from_texts(texts, tokenizer, max_length)


def collate(examples: Sequence[Mapping[str, Sequence[int]]],
            pad_id: int) -> dict[str, torch.Tensor]:
    """Stack examples into a right-padded batch.

    Returns:
        ``input_ids`` (padded with ``pad_id``), ``labels`` (padded with
        :data:`IGNORE_INDEX`) and ``attention_mask`` (1 on tokens, 0 on padding), all int64
        tensors of shape (batch, longest example).
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    width = max(len(e["input_ids"]) for e in examples)
    shape = (len(examples), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        if len(example["labels"]) != n:
            raise ValueError(f"example {row} has {n} input_ids but {len(example['labels'])} labels")
        input_ids[row, :n] = torch.as_tensor(example["input_ids"], dtype=torch.long)
        labels[row, :n] = torch.as_tensor(example["labels"], dtype=torch.long)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed mixing ``seed`` and ``epoch`` (splitmix64 finaliser), so that nearby
    (seed, epoch) pairs give unrelated shuffles."""
    mask = (1 << 64) - 1
    x = (seed * 0x9E3779B97F4A7C15 + epoch + 1) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return (x ^ (x >> 31)) >> 1


def batches_per_epoch(n_examples: int, batch_size: int, world_size: int = 1,
                      drop_last: bool = False) -> int:
    """How many batches :func:`batches` yields per rank and epoch."""
    per_rank = n_examples // world_size
    return per_rank // batch_size if drop_last else -(-per_rank // batch_size)


def batches(examples: Sequence[Example], batch_size: int, seed: int, epoch: int, rank: int = 0,
            world_size: int = 1, drop_last: bool = False) -> Iterator[list[Example]]:
    """Shuffled batches of one epoch for one data-parallel rank.

    The shuffle depends only on ``(seed, epoch)``. Rank ``r`` of ``world_size`` takes every
    ``world_size``-th example of the shuffled order starting at ``r``, cut to
    ``len(examples) // world_size`` examples, so that the ranks' shares are disjoint and
    every rank yields the same number of batches of the same sizes (at most
    ``world_size - 1`` examples, different each epoch, are left out). Only the last batch
    may be smaller than ``batch_size``; ``drop_last`` leaves it out.

    Yields:
        lists of examples; pass them to :func:`collate`.

    Raises:
        ValueError: bad ``batch_size``, ``rank`` or ``world_size``, or fewer examples than
            ranks.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    per_rank = len(examples) // world_size
    if per_rank == 0:
        raise ValueError(f"{len(examples)} examples cannot be shared among {world_size} ranks")
    generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
    order = torch.randperm(len(examples), generator=generator)[rank::world_size][:per_rank]
    indices = order.tolist()
    for start in range(0, per_rank, batch_size):
        chunk = indices[start:start + batch_size]
        if drop_last and len(chunk) < batch_size:
            return
        yield [examples[i] for i in chunk]


def count_tokens(batch: Mapping[str, torch.Tensor], labelled: bool = False) -> int:
    """Number of real (non-padding) tokens in a collated batch, from its ``attention_mask``;
    with ``labelled``, only the tokens the loss covers (labels other than
    :data:`IGNORE_INDEX`)."""
    if labelled:
        return int((batch["labels"] != IGNORE_INDEX).sum())
    return int(batch["attention_mask"].sum())


def length_stats(examples: Sequence[Example], end_id: int | None = None) -> dict[str, float]:
    """Token statistics of tokenized examples: ``count``, ``mean``, ``min`` and ``max``
    sequence length and ``mean_answer`` (labelled tokens per example); given the
    end-of-turn token id ``end_id``, also ``truncated``: how many examples do not end with
    it (their answer was cut off by ``max_length``)."""
    lengths = [len(e["input_ids"]) for e in examples]
    answers = [sum(label != IGNORE_INDEX for label in e["labels"]) for e in examples]
    n = max(len(lengths), 1)
    stats: dict[str, float] = {
        "count": len(lengths), "mean": sum(lengths) / n, "min": min(lengths, default=0),
        "max": max(lengths, default=0), "mean_answer": sum(answers) / n}
    if end_id is not None:
        stats["truncated"] = sum(1 for e in examples if e["input_ids"][-1] != end_id)
    return stats
