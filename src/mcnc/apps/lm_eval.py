"""Evaluating a causal language model on the answer tokens of instruction data: next-token
loss and accuracy where the labels are not ``-100``, tokens per second, and how far merging an
adapter moves the logits (used by ``mcnc finetune``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from mcnc.apps.distributed import Context, sum_over_processes


def next_token_logits(model: nn.Module, batch: dict[str, torch.Tensor]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(batch, length - 1, vocab)`` predicting each next token, and the labels they
    predict (``-100`` where the token is not part of an answer)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out.logits[:, :-1].float(), batch["labels"][:, 1:]


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device) for name, tensor in batch.items()}


def token_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the answer tokens of ``batch`` and their count."""
    logits, labels = next_token_logits(model, batch)
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                       ignore_index=-100, reduction="sum")
    return loss, int((labels != -100).sum())


@dataclass
class Evaluation:
    """A pass over the validation answers."""

    loss: float
    """Cross-entropy per answer token."""
    token_accuracy: float
    """Share of answer tokens that the greedy (argmax) next-token prediction gets right."""
    tokens_per_s: float
    """Tokens (answers and prompts) through the unmerged model per second."""


@torch.no_grad()
def evaluate(model: nn.Module, examples: list[dict], batch_size: int, val_batches: int | None,
             pad_id: int, ctx: Context) -> Evaluation:
    """Evaluate ``model`` on ``examples``. Global batches of ``batch_size`` are shared by the
    processes as in training (the first ``val_batches`` of them; None: all). Leaves the model in
    eval mode."""
    from mcnc.llm.data import batches, collate, count_tokens

    model.eval()
    total, correct, count, tokens, seconds = 0.0, 0, 0, 0, 0.0
    chunks = batches(examples, batch_size // ctx.world, seed=0, epoch=0, rank=ctx.rank,
                     world_size=ctx.world)
    for i, chunk in enumerate(chunks):
        if val_batches is not None and i >= val_batches:
            break
        batch = to_device(collate(chunk, pad_id), ctx.device)
        t0 = time.perf_counter()
        logits, labels = next_token_logits(model, batch)
        seconds += time.perf_counter() - t0
        answer = labels != -100
        total += nn.functional.cross_entropy(logits[answer], labels[answer],
                                             reduction="sum").item()
        correct += int((logits[answer].argmax(-1) == labels[answer]).sum())
        count, tokens = count + int(answer.sum()), tokens + count_tokens(batch)
    total, correct, count, tokens, seconds = sum_over_processes(
        [total, correct, count, tokens, seconds], ctx)
    return Evaluation(total / max(count, 1), correct / max(count, 1),
                      tokens / max(seconds, 1e-9))


@torch.no_grad()
def merge_error(model: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Merge the adapter into the base weights (in place: ``model`` is spent afterwards) and
    return the largest change in any logit of ``batch``, relative to the largest logit."""
    model.eval()
    unmerged, _ = next_token_logits(model, batch)
    merged, _ = next_token_logits(model.merge_and_unload(), batch)
    return float((merged - unmerged).abs().max() / unmerged.abs().max())
