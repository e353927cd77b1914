"""``mcnc train``: one model, one data set, one method, one budget; data-parallel under torchrun.

Every epoch the training set is shuffled by a generator seeded from (seed, epoch) and cut into
global batches of ``batch_size``; under ``torchrun`` process r takes every world-size-th sample
of each global batch, so N processes with batch B/N each see exactly what one process with
batch B sees, and DDP averages their gradients. A checkpoint is written after every epoch
(``--resume`` continues from it), then the model file and one JSON line of results. A run
killed at any moment resumes to the same numbers as one never interrupted; a non-finite loss
stops the run with :class:`DivergedError` and leaves the last good checkpoint as it was.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import safetensors.torch
import torch
from torch import nn
from tqdm.auto import tqdm

from mcnc.apps.checkpoint import read_checkpoint, restore, save_checkpoint
from mcnc.apps.distributed import Context, init_distributed, sum_over_processes
from mcnc.apps.loop import param_groups, train_step, warmup_cosine
from mcnc.apps.machine import machine_line
from mcnc.apps.methods import METHOD_NAMES, MethodSettings, build_method
from mcnc.apps.rates import classifier_lr
from mcnc.baselines import PruningConfig, prune
from mcnc.core.errors import DivergedError
from mcnc.core.fileformat import atomic_write, save, to_bytes
from mcnc.core.manifold import manifold_rates
from mcnc.core.reparam import Reparameterized
from mcnc.data.dataset import ImageDataset, collate_batch, subset
from mcnc.data.registry import load_dataset
from mcnc.models import build_model


@dataclass
class TrainSettings:
    """Everything one ``mcnc train`` run depends on (written into its results)."""

    model: str = "mlp"
    dataset: str = "mnist"
    method: str = "mcnc"
    budget: int | None = None
    epochs: int = 3
    batch_size: int = 128
    """Global batch size (split over processes under torchrun)."""
    lr: float | None = None
    """Learning rate of the method's own numbers; None: the method's default."""
    dense_lr: float = 1e-3
    """Learning rate of dense parameters (normalisation layers; everything for ``dense``)."""
    beta_lr_scale: float = 1.0
    """MCNC: beta trains at ``lr * beta_lr_scale`` (alpha at ``lr``), times its typical size
    under ``beta_rate="relative"``."""
    beta_rate: str = "relative"
    """MCNC: ``"relative"`` scales beta's rate by its typical size, so that a step moves the
    weights as far at every budget; ``"absolute"`` (before version 0.3) does not
    (:meth:`~mcnc.core.manifold.ChunkedManifold.param_groups`)."""
    warmup: float = 0.0
    """Share of the steps over which the learning rates rise linearly from 0 before the
    cosine decay (0: cosine decay from the first step)."""
    seed: int = 0
    method_settings: MethodSettings = field(default_factory=MethodSettings)
    data_root: str | None = None
    train_subset: int | None = None
    """Train on this many samples (a seeded subset) instead of the whole training set."""
    test_subset: int | None = None
    augment: bool = False
    bn_batches: int = 20
    """Before every evaluation, batch-norm statistics are recomputed from this many training
    batches (0: keep the running averages). Compressed weights can move so fast that running
    averages lag far behind them (see :func:`recalibrate_batch_norm`)."""
    prune_after: float = 0.5
    """``pruning``: share of the epochs trained dense before pruning (the rest retrains)."""
    out: str | None = None
    resume: bool = False
    progress: bool = True
    workers: int = 0
    deterministic: bool = False
    """Make torch refuse nondeterministic kernels and turn off cuDNN autotuning for the run, so
    a GPU run also repeats bit for bit (a CPU run does anyway)."""

    def to_dict(self) -> dict:
        return asdict(self)


def _datasets(s: TrainSettings) -> tuple[ImageDataset, ImageDataset]:
    train = load_dataset(s.dataset, "train", s.data_root, augment=s.augment,
                         generator=torch.Generator())
    test = load_dataset(s.dataset, "test", s.data_root)
    if s.train_subset:
        train = subset(train, s.train_subset, seed=s.seed)
    if s.test_subset:
        test = subset(test, s.test_subset, seed=s.seed)
    return train, test


def _epoch_batches(n: int, s: TrainSettings, epoch: int, ctx: Context) -> list[list[int]]:
    """This process's share of every global batch of the epoch."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(s.seed * 100_003 + epoch))
    return [order[i : i + s.batch_size][ctx.rank :: ctx.world].tolist()
            for i in range(0, n, s.batch_size)]


@torch.no_grad()
def evaluate(model: nn.Module, test: ImageDataset, ctx: Context, batch_size: int = 500) -> float:
    """Top-1 accuracy on the test set, shared out over the processes."""
    model.eval()
    correct = count = 0
    index = list(range(ctx.rank, len(test), ctx.world))
    for i in range(0, len(index), batch_size):
        x, y = test.__getitems__(index[i : i + batch_size])
        pred = model(x.to(ctx.device)).argmax(1)
        correct, count = correct + (pred == y.to(ctx.device)).sum().item(), count + len(y)
    correct, count = sum_over_processes([correct, count], ctx)
    model.train()
    return correct / count


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, batches, device: torch.device) -> bool:
    """Replace every batch-norm layer's running mean and variance by their exact average over
    ``batches`` (the weights as they are now). Returns whether the model has batch norm.

    Running averages (momentum 0.1) describe the weights of the last few dozen steps. When the
    weights are generated, one optimiser step can move them a long way, and a short run ends
    with statistics of weights that no longer exist: in the quick preset ResNet-20 with MCNC
    trained to a loss like PRANC's yet scored 19% instead of 72% in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    for x, _ in batches:
        model(x.to(device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return True


class Run:
    """The state of one training run: model, optimiser, schedule, epoch, history."""

    def __init__(self, s: TrainSettings, ctx: Context):
        if s.method not in METHOD_NAMES:
            raise ValueError(f"unknown method {s.method!r}; choose one of "
                             f"{', '.join(METHOD_NAMES)}")
        self.s, self.ctx = s, ctx
        self.out = Path(s.out) if s.out else None
        self.checkpoint = self.out / "checkpoint.safetensors" if self.out else None
        self.train_set, self.test_set = _datasets(s)
        info = self.train_set.info
        torch.manual_seed(s.seed)
        self.base = build_model(s.model, info.in_channels,
                                info.image_size or self.train_set.raw(torch.arange(1)).shape[-1],
                                len(self.train_set.classes))
        self.epoch, self.history, self.phase = 0, [], "train"
        self.dense_epochs = 0
        if s.method == "pruning":
            self.dense_epochs = max(1, round(s.epochs * s.prune_after))
            self.phase = "dense"
            self.model = self.base
        else:
            self.model = self._build(s.method)
        self.model.to(ctx.device)
        self._new_optimizer()

    def _build(self, method: str) -> nn.Module:
        return build_method(method, self.base, self.s.budget, self.s.seed,
                            self.s.method_settings)

    @property
    def lr(self) -> float:
        return self.s.lr if self.s.lr is not None else classifier_lr(self.s.method)

    def _phase_length(self) -> int:
        """Epochs of the current phase (pruning: dense, then retraining; others: one phase)."""
        if self.phase == "dense":
            return self.dense_epochs
        return self.s.epochs - self.dense_epochs

    def _new_optimizer(self) -> None:
        lr = self.s.dense_lr if self.phase == "dense" else self.lr
        rates = manifold_rates(self.s.beta_lr_scale, self.s.beta_rate)
        self.optimizer = torch.optim.Adam(param_groups(self.model, lr, self.s.dense_lr, **rates))
        steps_per_epoch = -(-len(self.train_set) // self.s.batch_size)
        steps = max(1, self._phase_length() * steps_per_epoch)
        self.scheduler = warmup_cosine(self.optimizer, steps, self.s.warmup)
        self.ddp = self.model
        if self.ctx.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(self.model, broadcast_buffers=False)

    def _prune(self) -> None:
        self.model = self._build("pruning")
        self.phase = "train"
        self._new_optimizer()

    # -- checkpoints ----------------------------------------------------------------------------
    def _checkpoint_info(self) -> dict:
        return {"epoch": self.epoch, "phase": self.phase, "history": self.history,
                "settings": self.s.to_dict()}

    def resume_from(self, path: Path) -> None:
        tensors, meta = read_checkpoint(path)
        info = meta["info"]
        free = {"resume": True, "progress": True, "deterministic": True}  # may change on resume
        if info["settings"] | free != self.s.to_dict() | free:
            raise ValueError(f"{path} was written by a run with other settings; use another "
                             "--out directory or drop --resume")
        if info["phase"] != self.phase:  # pruning, after the prune
            self.model = prune(self.base, PruningConfig(nonzeros=self.s.budget),
                               kept=tensors["model.kept_index"])
            self.phase = info["phase"]
            self._new_optimizer()
        restore(tensors, meta, self.model, self.optimizer, self.scheduler)
        self.epoch, self.history = info["epoch"], info["history"]

    # -- training -------------------------------------------------------------------------------
    def train_epoch(self) -> float:
        self.model.train()
        batches = _epoch_batches(len(self.train_set), self.s, self.epoch, self.ctx)
        self.train_set.generator.manual_seed(self.s.seed * 100_003 + self.epoch * 1009
                                             + self.ctx.rank)
        loader = torch.utils.data.DataLoader(self.train_set, batch_sampler=batches,
                                             collate_fn=collate_batch,
                                             num_workers=self.s.workers)
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}/{self.s.epochs}", leave=False,
                   disable=not (self.s.progress and self.ctx.main))
        for step, (x, y) in enumerate(bar, 1):
            x, y = x.to(self.ctx.device), y.to(self.ctx.device)
            value = train_step(self.model, self.optimizer, x, y, forward=self.ddp).item()
            self.scheduler.step()
            if not math.isfinite(value):
                bar.close()
                raise self._diverged(value, step, len(batches))
            total, count = total + value * len(y), count + len(y)
            bar.set_postfix(loss=f"{total / count:.4f}")
        total, count = sum_over_processes([total, count], self.ctx)  # every process's samples
        return total / max(count, 1)

    def _diverged(self, loss: float, step: int, steps: int) -> DivergedError:
        """The error for a non-finite loss at ``step`` of the current epoch (the model in memory
        is spoilt, so the run stops before anything is written)."""
        if self.checkpoint is None:
            kept = "nothing was saved (no --out)"
        elif self.epoch == 0:
            kept = f"no checkpoint had been written to {self.checkpoint} yet"
        else:
            kept = f"the last good checkpoint, after epoch {self.epoch}, is kept at " \
                   f"{self.checkpoint}"
        return DivergedError(
            f"the training loss became {loss} at step {step}/{steps} of epoch "
            f"{self.epoch + 1}/{self.s.epochs}, so the run stopped; {kept} and no model file "
            f"was written. Try a lower learning rate (--lr, now {self.lr:g}; --dense-lr, now "
            f"{self.s.dense_lr:g}), a larger --batch-size or another --seed, with a new --out "
            "directory (a checkpoint resumes only with the settings that wrote it).")

    def run(self) -> dict:
        checkpoint = self.checkpoint
        if self.s.resume and checkpoint is not None and checkpoint.exists():
            self.resume_from(checkpoint)
        start = time.perf_counter()
        while self.epoch < self.s.epochs:
            if self.phase == "dense" and self.epoch == self.dense_epochs:
                self._prune()
            t0 = time.perf_counter()
            loss = self.train_epoch()
            self.epoch += 1
            if self.s.bn_batches:
                batches = _epoch_batches(len(self.train_set), self.s, self.epoch, self.ctx)
                recalibrate_batch_norm(self.model, (self.train_set.__getitems__(b) for b in
                                                    batches[: self.s.bn_batches]),
                                       self.ctx.device)
            acc = evaluate(self.model, self.test_set, self.ctx)
            self.history.append({"epoch": self.epoch, "train_loss": loss,
                                 "test_accuracy": acc, "seconds": time.perf_counter() - t0})
            if self.ctx.main and checkpoint is not None:
                save_checkpoint(checkpoint, self.model, self.optimizer, self.scheduler,
                                self._checkpoint_info())
        if self.phase == "dense" and self.s.method == "pruning":
            self._prune()  # fewer epochs than the dense phase: prune without retraining
        return self._results(time.perf_counter() - start)

    def _results(self, seconds: float) -> dict:
        out, model = self.out, self.model
        leftovers = (sum(v.numel() for v in model.dense_leftovers().values())
                     if isinstance(model, Reparameterized) else 0)
        data = None  # no file for experimental options a file cannot record yet
        if isinstance(model, Reparameterized):
            own = sum(t.numel() for t in model.method_tensors().values())
            if not getattr(model.config, "experimental", None):
                data = to_bytes(model)
                if out is not None and self.ctx.main:
                    save(model, out / "model.mcnc")
        else:
            own = sum(p.numel() for p in model.parameters())
            data = safetensors.torch.save({k: v.contiguous() for k, v in
                                           model.state_dict().items()})
            if out is not None and self.ctx.main:
                atomic_write(out / "model.safetensors", data)
        last = self.history[-1] if self.history else {}
        return {
            "model": self.s.model, "dataset": self.s.dataset, "method": self.s.method,
            "budget": self.s.budget, "seed": self.s.seed, "epochs": self.s.epochs,
            "method_numbers": own, "dense_leftovers": leftovers,
            "stored_numbers": own + leftovers, "file_bytes": None if data is None else len(data),
            "index_bytes": 4 * own if self.s.method == "pruning" else 0,
            "test_accuracy": last.get("test_accuracy", math.nan),
            "train_loss": last.get("train_loss", math.nan),
            "train_seconds": seconds, "world_size": self.ctx.world,
            "lr": self.lr, "beta_lr_scale": self.s.beta_lr_scale, "beta_rate": self.s.beta_rate,
            "train_samples": len(self.train_set), "test_samples": len(self.test_set),
            "machine": machine_line(),
            "history": self.history,
        }


@contextlib.contextmanager
def _deterministic(on: bool) -> Iterator[None]:
    """Deterministic algorithms only (and no cuDNN autotuning) inside the block, if ``on``."""
    if not on:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to comply
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


def train(settings: TrainSettings) -> dict:
    """Run one training job; returns (and, with ``out``, writes) its results."""
    ctx = init_distributed()
    if settings.out and ctx.main:
        Path(settings.out).mkdir(parents=True, exist_ok=True)
    with _deterministic(settings.deterministic):
        result = Run(settings, ctx).run()
    if settings.out and ctx.main:
        with open(Path(settings.out) / "results.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
    return result
