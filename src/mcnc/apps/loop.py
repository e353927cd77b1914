"""The optimiser step every classifier loop shares (:func:`train_step`, :func:`param_groups`)
and a plain training loop for data held in memory, with a progress bar (the demo's)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mcnc.core.reparam import Reparameterized


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    test_accuracy: float
    seconds: float


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator
            ) -> Iterator[tuple[torch.Tensor, ...]]:
    """Mini-batches of ``(x, y)`` in an order drawn from ``generator``."""
    order = torch.randperm(len(x), generator=generator)
    for i in range(0, len(x), batch_size):
        idx = order[i : i + batch_size]
        yield x[idx], y[idx]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes (N,) in eval mode (the model's training flag is restored)."""
    was_training = model.training
    model.eval()
    preds = torch.cat([model(x[i : i + batch_size]).argmax(1)
                       for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return preds


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in eval mode."""
    return (predict(model, x) == y).float().mean().item()


def param_groups(model: nn.Module, lr: float, dense_lr: float, **rates: float) -> list[dict]:
    """A compressed model's own groups (:meth:`~mcnc.core.reparam.Reparameterized.param_groups`:
    its numbers at ``lr``, with ``rates`` such as MCNC's ``beta_lr_scale``, the rest at
    ``dense_lr``); a dense model's trainable parameters at ``dense_lr``."""
    if isinstance(model, Reparameterized):
        return model.param_groups(lr, dense_lr, **rates)
    if rates:
        raise ValueError(f"{sorted(rates)}: a dense model has one rate (dense_lr)")
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": dense_lr}]


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int, warmup: float = 0.0
                  ) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay to 0 over ``steps``, after a linear rise over the first ``warmup`` share
    of them (``warmup=0``: PyTorch's plain ``CosineAnnealingLR``)."""
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup must be a share of the steps in [0, 1), got {warmup!r}")
    rise = round(steps * warmup)
    if rise == 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    first = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0 / rise, 1.0, rise)
    then = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps - rise)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [first, then], [rise])


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, forward: nn.Module | None = None) -> torch.Tensor:
    """One optimiser step on cross-entropy; a compressed model's alphas are folded back into
    the cube afterwards. Returns the (detached) loss.

    Args:
        forward: the module to call on ``x`` when it is not ``model`` itself, e.g. a
            ``DistributedDataParallel`` wrapper of ``model``.
    """
    loss = F.cross_entropy((forward or model)(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if isinstance(model, Reparameterized):
        model.after_step()
    return loss.detach()


def train_classifier(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    epochs: int,
    lr: float,
    dense_lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> list[EpochResult]:
    """Adam with a cosine learning-rate decay to zero, cross-entropy loss.

    Compressed models get their alphas folded back into the cube after every step.
    """
    optimizer = torch.optim.Adam(param_groups(model, lr, dense_lr))
    steps = epochs * -(-len(train[0]) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    order = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        start, total, count = time.perf_counter(), 0.0, 0
        model.train()
        bar = tqdm(batches(*train, batch_size, order), total=-(-len(train[0]) // batch_size),
                   desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
        for xb, yb in bar:
            loss = train_step(model, optimizer, xb, yb)
            schedule.step()
            total, count = total + loss.item() * len(xb), count + len(xb)
            bar.set_postfix(loss=f"{total / count:.4f}")
        result = EpochResult(epoch, total / count, accuracy(model, *test),
                             time.perf_counter() - start)
        history.append(result)
        if on_epoch:
            on_epoch(result)
    return history
