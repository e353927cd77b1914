"""Evaluating a causal language model on the answer tokens of instruction data: next-token
loss and accuracy where the labels are not ``-100``, tokens per second, and how far merging an
adapter moves the logits (used by ``mcnc finetune``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def _output_layer_rows(model: nn.Module, keep: torch.Tensor) -> Iterator[None]:
    """While open, the model's output layer (``get_output_embeddings``, looked up through DDP's
    ``module``) receives only the hidden states where ``keep`` ``(batch, length)`` is True, as
    rows ``(keep.sum(), hidden)``. Nothing happens for a model without one."""
    inner = getattr(model, "module", model)
    find = getattr(inner, "get_output_embeddings", None)
    head = find() if callable(find) else None
    if not isinstance(head, nn.Module):
        yield
        return

    def select_rows(_module: nn.Module, args: tuple) -> tuple | None:
        if args and isinstance(args[0], torch.Tensor) and args[0].shape[:2] == keep.shape:
            return (args[0][keep], *args[1:])
        return None

    handle = head.register_forward_pre_hook(select_rows)
    try:
        yield
    finally:
        handle.remove()


def answer_logits(model: nn.Module, batch: dict[str, torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(n, vocab)`` (float32) at the ``n`` positions whose next token is an answer
    token, and those tokens ``(n,)``, in row-major order.

    The output layer runs on those positions only: with a large vocabulary it is a sizeable
    share of a step (SmolLM2-135M: 28 M of its 135 M weights, over every position), while
    instruction data labels a fifth of them or fewer. Same values as selecting from
    :func:`next_token_logits`. A model whose logits do not come from its output layer's
    ``forward`` computes them everywhere and is then selected from."""
    labels = batch["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    with _output_layer_rows(model, keep):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if logits.dim() == 3:
        logits = logits[keep]
    targets = labels[:, 1:][keep[:, :-1]]
    if logits.shape[0] != targets.shape[0]:
        raise RuntimeError(f"the model returned logits for {logits.shape[0]} positions where "
                           f"{targets.shape[0]} answer tokens were asked for: its output layer "
                           "changes the number of positions, which mcnc's loss does not support")
    return logits.float(), targets


def token_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the answer tokens of ``batch`` and their count."""
    logits, targets = answer_logits(model, batch)
    return nn.functional.cross_entropy(logits, targets, reduction="sum"), targets.numel()


@dataclass
class Evaluation:
    """A pass over the validation answers."""

    loss: float
    """Cross-entropy per answer token."""
    token_accuracy: float
    """Share of answer tokens that the greedy (argmax) next-token prediction gets right."""
    tokens_per_s: float
    """Tokens (answers and prompts) through the unmerged model per second (the output layer
    on the answer positions only, as in training)."""


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
        logits, targets = answer_logits(model, batch)
        seconds += time.perf_counter() - t0
        total += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        correct += int((logits.argmax(-1) == targets).sum())
        count, tokens = count + targets.numel(), tokens + count_tokens(batch)
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
