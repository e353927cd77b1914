"""``mcnc generate``: text from a base model with an mcnc adapter folder, greedy or sampled.

    mcnc generate --adapter runs/mine/adapter "What is a manifold?"

The base model defaults to the one the folder was trained on (its ``training.json``, written
by ``mcnc finetune``); the prompt goes through the tokenizer's chat template as one user turn
unless ``--raw``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class GenerateSettings:
    adapter: str
    """An mcnc adapter folder (``save_pretrained``, ``mcnc finetune --out DIR``: DIR/adapter)."""
    prompt: str
    model: str | None = None
    """The base model (a name or a local folder or ``.gguf`` file); None: the one in the
    folder's ``training.json``."""
    max_new_tokens: int = 64
    temperature: float = 0.0
    """0: greedy; above 0: sampled at this temperature (with ``top_p``)."""
    top_p: float = 1.0
    seed: int = 0
    raw: bool = False
    """Give the prompt to the model as it is, without the chat template."""


def base_model_of(adapter: str | Path) -> str:
    """The base model an adapter folder was trained on, from its ``training.json``."""
    from mcnc.apps.finetune import TRAINING_NAME

    path = Path(adapter) / TRAINING_NAME
    if not path.is_file():
        raise ValueError(f"{adapter} has no {TRAINING_NAME} naming its base model (folders "
                         "written by mcnc finetune have one); pass --model")
    return json.loads(path.read_text())["base_model"]


def generate(s: GenerateSettings) -> str:
    """The text the model with the adapter adds after the prompt."""
    from mcnc.adapters import AdapterModel
    from mcnc.llm.models import build_language_model

    if s.temperature < 0 or not 0 < s.top_p <= 1 or s.max_new_tokens < 1:
        raise ValueError("--temperature must be >= 0, --top-p in (0, 1] and --max-new-tokens "
                         ">= 1")
    base, tokenizer = build_language_model(s.model or base_model_of(s.adapter))
    model = AdapterModel.from_pretrained(base, s.adapter).eval()
    text = s.prompt
    if not s.raw and getattr(tokenizer, "chat_template", None) is not None:
        text = tokenizer.apply_chat_template([{"role": "user", "content": s.prompt}],
                                             tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    sampled = s.temperature > 0
    torch.manual_seed(s.seed)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=s.max_new_tokens, do_sample=sampled,
                             **({"temperature": s.temperature, "top_p": s.top_p} if sampled
                                else {}), pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
