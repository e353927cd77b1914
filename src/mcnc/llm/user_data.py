"""A user's own fine-tuning data: JSON lines, JSON or CSV files, checked row by row.

Every row is one example in one of four forms (the columns decide; one form per file):

=========================  ===============================================================
columns                    what is trained
=========================  ===============================================================
``messages``               a chat, a list of ``{"role", "content"}``; the loss covers the
                           last message, which must be the assistant's (chat template)
``question``, ``answer``   one user turn and one assistant turn (chat template); the loss
                           covers the answer, as for the built-in Q/A pairs
``prompt``, ``completion`` plain text, no template: the loss covers the completion (and the
                           end-of-sequence token after it)
``text``                   plain text; the loss covers every token (and end of sequence)
=========================  ===============================================================

A file's rows are read as :class:`Record` (the prompt text, or ``None``, and the text the loss
covers); :func:`tokenize_records` turns them into the examples the training loop takes. Any
problem raises :class:`~mcnc.data.errors.DataCorruptError` naming the file, the line (JSON
lines, CSV) or row (JSON) and the field.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mcnc.data.errors import DataCorruptError, DataNotFoundError
from mcnc.llm.data import Example, chat_texts, examples_from_texts

FORMS: dict[frozenset[str], str] = {
    frozenset({"messages"}): "chat",
    frozenset({"question", "answer"}): "qa",
    frozenset({"prompt", "completion"}): "completion",
    frozenset({"text"}): "text",
}
SUFFIXES = (".jsonl", ".json", ".csv")
MAX_ROW_CHARS = 100_000
"""The longest row text accepted (a row this long is a mistake, e.g. a whole document)."""


@dataclass(frozen=True)
class Record:
    """One example: ``prompt`` (``None`` for plain text, a chat to render for ``chat``) and
    the text the loss covers."""

    form: str
    prompt: Any
    target: str


def _rows(path: Path) -> list[tuple[str, dict]]:
    """``(where, row)`` for every row of a JSON lines, JSON or CSV file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise DataCorruptError(f"{path}, line {line}: not UTF-8 text ({error.reason}); save the "
                               "file as UTF-8") from None
    if not text.strip():
        raise DataCorruptError(f"{path} is empty; it needs one example per row")
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        return [(f"line {reader.line_num}", row) for row in reader]
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except ValueError as error:
            raise DataCorruptError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(rows, list):
            raise DataCorruptError(f"{path}: a JSON file must hold a list of rows (objects)")
        return [(f"row {i + 1}", row) for i, row in enumerate(rows)]
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((f"line {number}", json.loads(line)))
            except ValueError as error:
                raise DataCorruptError(f"{path}, line {number}: not valid JSON ({error})") \
                    from None
    return rows


def _form(path: Path, columns: set[str]) -> str:
    for names, form in FORMS.items():
        if names <= columns:
            return form
    known = " | ".join(" + ".join(sorted(names)) for names in FORMS)
    raise DataCorruptError(f"{path}: unknown columns {sorted(columns)}; a row needs {known}")


def _text(path: Path, where: str, row: dict, name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        raise DataCorruptError(f"{path}, {where}: field {name!r} must be non-empty text, got "
                               f"{value!r:.60}")
    if len(value) > MAX_ROW_CHARS:
        raise DataCorruptError(f"{path}, {where}: field {name!r} is {len(value):,} characters, "
                               f"more than {MAX_ROW_CHARS:,}; split it into several rows")
    return value


def _chat(path: Path, where: str, row: dict) -> list[dict]:
    messages = row.get("messages")
    if not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)):
        raise DataCorruptError(f"{path}, {where}: field 'messages' must be a non-empty list of "
                               "{\"role\": ..., \"content\": ...} objects")
    if messages[-1]["role"] != "assistant":
        raise DataCorruptError(f"{path}, {where}: the last message must be the assistant's "
                               f"(the one the loss covers), not {messages[-1]['role']!r}")
    for i, message in enumerate(messages):
        _text(path, f"{where}, message {i + 1}", message, "content")
    return messages


def read_records(path: str | Path) -> list[Record]:
    """Every row of ``path`` as a :class:`Record` (one form per file).

    Raises:
        DataNotFoundError: the file does not exist. DataCorruptError: anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path} does not exist; --data takes a JSON lines, JSON or CSV "
                                "file")
    if path.suffix not in SUFFIXES:
        raise DataCorruptError(f"{path}: unknown file type {path.suffix!r}; use one of "
                               f"{', '.join(SUFFIXES)}")
    rows = _rows(path)
    if not rows:
        raise DataCorruptError(f"{path} has no rows")
    for where, row in rows:
        if not isinstance(row, dict):
            raise DataCorruptError(f"{path}, {where}: a row must be an object of fields")
    form = _form(path, set(rows[0][1]))
    records = []
    for where, row in rows:
        if form == "chat":
            messages = _chat(path, where, row)
            records.append(Record(form, messages[:-1], messages[-1]["content"]))
        elif form == "qa":
            records.append(Record(form, _text(path, where, row, "question"),
                                  _text(path, where, row, "answer")))
        elif form == "completion":
            records.append(Record(form, _text(path, where, row, "prompt"),
                                  _text(path, where, row, "completion")))
        else:
            records.append(Record(form, None, _text(path, where, row, "text")))
    return records


def split_records(records: list[Record], path: str | Path, val_fraction: float = 0.1,
                  seed: int = 0) -> tuple[list[Record], list[Record]]:
    """``(train, validation)``: a seeded ``val_fraction`` of the rows (at least one) held out.

    Raises:
        DataCorruptError: fewer than two rows (nothing left to train on).
    """
    if len(records) < 2:
        raise DataCorruptError(f"{path} has {len(records)} row(s): too few to hold out "
                               "validation rows; add rows or pass a validation file")
    count = max(1, round(val_fraction * len(records)))
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:count])
    return ([r for i, r in enumerate(records) if i not in held],
            [r for i, r in enumerate(records) if i in held])


def _prompt_and_target(record: Record, tokenizer: Any, path: str) -> tuple[str, str]:
    """The two texts of a record: templated for ``chat`` and ``qa``, plain otherwise."""
    if record.form in ("chat", "qa"):
        if getattr(tokenizer, "chat_template", None) is None:
            raise DataCorruptError(f"{path}: the tokenizer has no chat template, which "
                                   f"{record.form!r} rows need; use prompt/completion columns "
                                   "(plain text) or a model whose tokenizer has a template")
        history = ([{"role": "user", "content": record.prompt}] if record.form == "qa"
                   else record.prompt)
        return chat_texts(tokenizer, history, record.target)
    end = tokenizer.eos_token or ""
    return record.prompt or "", record.target + end


def tokenize_records(records: Sequence[Record], tokenizer: Any, max_length: int,
                     path: str = "the data") -> list[Example]:
    """The records as training examples (:func:`~mcnc.llm.data.examples_from_texts`): the
    loss covers each record's target text only."""
    texts = [_prompt_and_target(r, tokenizer, path) for r in records]
    return examples_from_texts(texts, tokenizer, max_length)
