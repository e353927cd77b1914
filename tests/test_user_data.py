"""A user's own fine-tuning data (``mcnc finetune --data``): every form, every error."""

import copy
import json

import pytest

from mcnc.apps.finetune import FinetuneSettings, finetune
from mcnc.data.errors import DataCorruptError, DataNotFoundError
from mcnc.llm.data import IGNORE_INDEX
from mcnc.llm.models import load_smollm2_tokenizer
from mcnc.llm.user_data import MAX_ROW_CHARS, read_records, split_records, tokenize_records

CHAT = {"messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "What is two plus two?"},
                     {"role": "assistant", "content": "Four."}]}


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _covered(example, tokenizer) -> str:
    """The text of the tokens the loss covers."""
    ids = [i for i, label in zip(example["input_ids"], example["labels"], strict=True)
           if label != IGNORE_INDEX]
    return tokenizer.decode(ids)


def test_each_form_covers_only_its_target(tmp_path):
    tokenizer = load_smollm2_tokenizer()
    chat = read_records(_jsonl(tmp_path / "chat.jsonl", [CHAT]))
    qa_path = tmp_path / "qa.json"
    qa_path.write_text(json.dumps([{"question": "Hi?", "answer": "Hello there."}]))
    csv_path = tmp_path / "pc.csv"
    csv_path.write_text('prompt,completion\n"Translate: chat","cat"\n')
    text = read_records(_jsonl(tmp_path / "text.jsonl", [{"text": "All of this is trained."}]))
    examples = {name: tokenize_records(records, tokenizer, 128)[0] for name, records in
                [("chat", chat), ("qa", read_records(qa_path)),
                 ("completion", read_records(csv_path)), ("text", text)]}
    assert _covered(examples["chat"], tokenizer) == "Four.<|im_end|>"
    assert _covered(examples["qa"], tokenizer) == "Hello there.<|im_end|>"
    assert _covered(examples["completion"], tokenizer) == "cat<|im_end|>"
    assert _covered(examples["text"], tokenizer) == "All of this is trained.<|im_end|>"
    assert IGNORE_INDEX not in examples["text"]["labels"]
    assert "Be brief." in tokenizer.decode(examples["chat"]["input_ids"])


@pytest.mark.parametrize(("content", "message"), [
    (b"", r"empty\.jsonl is empty"),
    (b'{"input": "a", "output": "b"}\n', r"unknown columns \['input', 'output'\]"),
    (b'{"text": "fine"}\n{"text": 3}\n', r"line 2: field 'text' must be non-empty text"),
    (b'{"text": "fine"}\n{"text": "caf\xe9"}\n', r"line 2: not UTF-8 text"),
    (b'{"text": "fine"}\nnot json\n', r"line 2: not valid JSON"),
    (json.dumps({"text": "x" * (MAX_ROW_CHARS + 1)}).encode(), r"line 1: field 'text' is"),
    (json.dumps({"messages": CHAT["messages"][:2]}).encode(),
     r"line 1: the last message must be the assistant's"),
])
def test_bad_data_names_the_file_line_and_field(tmp_path, content, message):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataCorruptError, match=message):
        read_records(path)


def test_missing_files_types_and_templates_are_clear(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        read_records(tmp_path / "none.jsonl")
    (tmp_path / "data.txt").write_text("text\n")
    with pytest.raises(DataCorruptError, match=r"unknown file type '\.txt'"):
        read_records(tmp_path / "data.txt")
    records = read_records(_jsonl(tmp_path / "chat.jsonl", [CHAT]))
    plain = copy.copy(load_smollm2_tokenizer())
    plain.chat_template = None
    with pytest.raises(DataCorruptError, match=r"no chat template.*prompt/completion"):
        tokenize_records(records, plain, 128, "chat.jsonl")
    with pytest.raises(DataCorruptError, match="too few to hold out"):
        split_records(records, "chat.jsonl")


def test_finetune_on_a_users_file_and_nothing_written_when_it_is_bad(tmp_path):
    rows = [{"prompt": f"Count to {i}:", "completion": " ".join(map(str, range(i)))}
            for i in range(1, 21)]
    data = _jsonl(tmp_path / "train.jsonl", rows)
    result = finetune(FinetuneSettings(model="tiny-llama", data=str(data), steps=2, rank=4,
                                       budget=240, max_length=48, out=str(tmp_path / "run"),
                                       progress=False))
    assert result["data"] == str(data) and result["train_examples"] == 18
    assert result["val_examples"] == 2
    bad = _jsonl(tmp_path / "bad.jsonl", [*rows, {"prompt": "x"}])
    with pytest.raises(DataCorruptError, match="line 21: field 'completion'"):
        finetune(FinetuneSettings(model="tiny-llama", data=str(bad), steps=2, rank=4,
                                  budget=240, out=str(tmp_path / "bad-run"), progress=False))
    assert not (tmp_path / "bad-run").exists()
    with pytest.raises(ValueError, match="--val-data needs --data"):
        finetune(FinetuneSettings(model="tiny-llama", val_data=str(data), progress=False))
