"""The output layer on answer positions only: SmolLM2-135M with mcnc's default adapter, one
training step (forward + backward of the answer-token loss) on batches of the built-in Q/A
pairs (4 x up to 128 tokens), with the logits computed at every position and then selected
(mcnc <= 0.3) against the output layer run on the answer positions only
(results/answer_head.{json,md}).

Rounds alternate between the two ways on the same batches; medians are reported, and the
largest relative difference of the losses.

    python benchmarks/answer_head.py          # ~3 minutes on 2 idle CPU cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from mcnc.adapters import AdapterModel
from mcnc.apps.finetune import FinetuneSettings, _data, adapter_config
from mcnc.apps.lm_eval import next_token_logits, token_loss_sum
from mcnc.apps.machine import machine_line
from mcnc.llm.data import batches, collate
from mcnc.llm.models import build_language_model


def full_logits_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The answer-token loss from logits at every position (how mcnc computed it before)."""
    logits, labels = next_token_logits(model, batch)
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                       ignore_index=-100, reduction="sum")
    return loss, int((labels != -100).sum())


WAYS = {"logits everywhere, then selected": full_logits_loss,
        "output layer on answer positions only": token_loss_sum}


def step_seconds(model: nn.Module, batch: dict[str, torch.Tensor], way) -> tuple[float, float]:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    loss, count = way(model, batch)
    (loss / count).backward()
    return time.perf_counter() - start, loss.item() / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    settings = FinetuneSettings()
    base, tokenizer = build_language_model(settings.model)
    model = AdapterModel(base)
    model.add_adapter("default", adapter_config(settings))
    model.train()
    train, _ = _data(settings, tokenizer)
    chunks = batches(train, settings.batch_size, seed=0, epoch=0)
    data = [collate(next(chunks), tokenizer.pad_token_id) for _ in range(args.rounds)]
    answer_share = [float((b["labels"][:, 1:] != -100).sum() / b["labels"].numel()) for b in data]
    rows = {name: {"seconds": [], "losses": []} for name in WAYS}
    step_seconds(model, data[0], token_loss_sum)  # warm-up
    for batch in data:
        for name, way in WAYS.items():
            seconds, loss = step_seconds(model, batch, way)
            rows[name]["seconds"].append(seconds)
            rows[name]["losses"].append(loss)
    for row in rows.values():
        row["median_seconds"] = statistics.median(row["seconds"])
    full, fast = (rows[name] for name in WAYS)
    result = {"machine": machine_line(), "threads": torch.get_num_threads(),
              "rounds": args.rounds, "answer_share_of_positions": statistics.mean(answer_share),
              "speedup": full["median_seconds"] / fast["median_seconds"],
              "largest_relative_loss_difference": max(
                  abs(a - b) / abs(a) for a, b in zip(full["losses"], fast["losses"], strict=True)),
              "ways": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "answer_head.json").write_text(json.dumps(result, indent=2))
    lines = ["# Output layer on answer positions only (SmolLM2-135M, mcnc adapter, one step)", "",
             f"Machine: {result['machine']}; {args.rounds} rounds "
             f"of 4 x up to 128 tokens, answers {result['answer_share_of_positions']:.0%} of "
             "the positions. Command: `python benchmarks/answer_head.py`.", "",
             "| way | median step (s) |", "|---|---|"]
    lines += [f"| {name} | {row['median_seconds']:.3f} |" for name, row in rows.items()]
    lines += ["", f"Speed-up {result['speedup']:.2f}x; largest relative loss difference "
              f"{result['largest_relative_loss_difference']:.1e}."]
    (out / "answer_head.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
