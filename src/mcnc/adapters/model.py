"""A frozen base model with named adapters, in the manner of peft's ``PeftModel``.

    model = mcnc.get_adapter_model(base, mcnc.MCNCAdapterConfig(rank=16))
    ...train: only the active adapter's tensors require grad...
    model.save_pretrained("out")                      # kilobytes: seeds, alphas, betas
    model = mcnc.AdapterModel.from_pretrained(fresh_base, "out")
    model.load_adapter("other", adapter_name="other")
    logits = model(input_ids, adapter_names=["default", "other", "__base__"]).logits

Every targeted linear layer is replaced by an :class:`~mcnc.adapters.layer.AdapterLinear`;
the adapters' trained tensors live in ``model.adapters`` (one
:class:`~mcnc.adapters.sources.FactorSource` per adapter).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from mcnc.adapters.config import AdapterConfig, MCNCAdapterConfig
from mcnc.adapters.files import (
    CONFIG_ENTRY,
    CONFIG_NAME,
    TRAINER_WEIGHTS,
    check_tensors,
    config_bytes,
    read_adapter,
    read_trainer_checkpoint,
    source_from_tensors,
    write_adapter,
)
from mcnc.adapters.layer import BASE, AdapterLinear, AdapterState, Slot
from mcnc.adapters.sources import (
    AdaptedLayer,
    FactorLayout,
    FactorSource,
    build_source,
    d_for_budget,
)
from mcnc.adapters.targets import (
    check_layers_fit,
    linear_layers,
    select_targets,
    warn_unadaptable,
)
from mcnc.core.errors import FormatError

DEFAULT = "default"
_NAME = re.compile(r"[A-Za-z0-9_\-]+")


class AdapterModel(nn.Module):
    """A base model (frozen) plus adapters; calls go to the base model with the adapters'
    deltas added in the targeted layers. Attributes it does not have (``config``,
    ``generation_config``, ...) are looked up on the base model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if isinstance(model, AdapterModel):
            raise ValueError("this model already has adapters; call add_adapter on it")
        self.base_model = model
        self.adapters = nn.ModuleDict()
        self.state = AdapterState(self.adapters)
        model.requires_grad_(False)
        model.register_forward_pre_hook(lambda *_: self._start_forward())

    def _start_forward(self) -> None:
        """Before each forward pass of the base model: compute the factors it will use, outside
        any layer (so gradient checkpointing recomputes layers without regenerating them)."""
        state = self.state
        state.new_forward()
        if state.disabled:
            return
        names = state.batch_adapters
        if names is None:
            names = [] if state.active in (None, *state.merged) else [state.active]
            state.matrices(names)
        else:
            state.prepare_batch([n for n in dict.fromkeys(names) if n != BASE])

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    # -- which layers ---------------------------------------------------------------------
    def linear_layers(self) -> dict[str, nn.Module]:
        """Every linear layer of the base model by name (the wrapped layer for adapted ones)."""
        return linear_layers(self.base_model)

    def select_targets(self, config: AdapterConfig) -> tuple[AdaptedLayer, ...]:
        """The layers ``config.target_modules`` selects, in model order."""
        return select_targets(self.base_model, config.target_modules)

    def _adapted_layer(self, name: str) -> AdapterLinear:
        module = self.base_model.get_submodule(name)
        if isinstance(module, AdapterLinear):
            return module
        wrapper = AdapterLinear(module, name, self.state)
        parent, _, attr = name.rpartition(".")
        setattr(self.base_model.get_submodule(parent) if parent else self.base_model,
                attr, wrapper)
        return wrapper

    # -- adding, choosing, removing ---------------------------------------------------------
    def _check_new_name(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name == BASE:
            raise ValueError(f"adapter name {name!r} must be letters, digits, '_' or '-' "
                             f"(and not {BASE!r})")
        if name in self.adapters:
            raise ValueError(f"an adapter named {name!r} exists already; choose another name "
                             "or delete_adapter() it first")

    def _install(self, name: str, source: FactorSource) -> None:
        device = next(self.base_model.parameters(), torch.empty(0)).device
        self.adapters[name] = source.to(device)
        c = source.config
        for t in source.layout.targets:
            self._adapted_layer(t.name).slots[name] = Slot(c.rank, c.scaling, c.dropout)
        if self.state.active is None:
            self.set_adapter(name)
        else:
            source.requires_grad_(False)

    def add_adapter(self, adapter_name: str, config: AdapterConfig, **options) -> FactorSource:
        """Add a new adapter (inactive unless it is the first one).

        Args:
            options: ``max_basis_bytes`` for NOLA (above it, bases are regenerated on the fly).
        """
        self._check_new_name(adapter_name)
        warn_unadaptable(self.base_model)
        layout = FactorLayout(self.select_targets(config), config.rank)
        if isinstance(config, MCNCAdapterConfig) and config.budget is not None:
            config = replace(config, d=d_for_budget(layout, config.budget, config))
        source = build_source(config, layout, **options)
        self._install(adapter_name, source)
        return source

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the active adapter: it alone is applied and trainable."""
        if adapter_name not in self.adapters:
            raise ValueError(f"no adapter named {adapter_name!r}; have {list(self.adapters)}")
        if self.state.merged and self.state.merged != [adapter_name]:
            raise ValueError(f"adapter(s) {self.state.merged} are merged into the base weights;"
                             " call unmerge_adapter() before switching")
        for name, source in self.adapters.items():
            source.requires_grad_(name == adapter_name)
        self.state.active = adapter_name

    @property
    def active_adapter(self) -> str | None:
        return self.state.active

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter (it must not be merged)."""
        if adapter_name in self.state.merged:
            raise ValueError(f"{adapter_name!r} is merged; call unmerge_adapter() first")
        if adapter_name not in self.adapters:
            raise ValueError(f"no adapter named {adapter_name!r}; have {list(self.adapters)}")
        del self.adapters[adapter_name]
        for layer in self._adapted_layers():
            layer.slots.pop(adapter_name, None)
        self.state.forget(adapter_name)
        if self.state.active == adapter_name:
            self.state.active = None
            if len(self.adapters):
                self.set_adapter(next(iter(self.adapters)))

    def _adapted_layers(self) -> list[AdapterLinear]:
        return [m for m in self.base_model.modules() if isinstance(m, AdapterLinear)]

    # -- running ------------------------------------------------------------------------------
    @contextmanager
    def _batch(self, adapter_names: list[str] | None) -> Iterator[None]:
        if adapter_names is not None:
            unknown = set(adapter_names) - set(self.adapters) - {BASE}
            if unknown:
                raise ValueError(f"unknown adapters {sorted(unknown)} in adapter_names; have "
                                 f"{list(self.adapters)} and {BASE!r} for none")
            if self.state.merged:
                raise ValueError("mixed batches need unmerged adapters; call unmerge_adapter()")
        previous, self.state.batch_adapters = self.state.batch_adapters, adapter_names
        try:
            yield
        finally:
            self.state.batch_adapters = previous
            self.state.end_batch()

    def forward(self, input_ids=None, attention_mask=None, labels=None, *args,
                adapter_names: list[str] | None = None, **kwargs):
        """The base model's forward. ``adapter_names``: one adapter name per sample (``"__base__"``
        for none), to run a mixed batch; otherwise the active adapter is used.

        ``input_ids``, ``attention_mask`` and ``labels`` are named so that tools that keep only
        the inputs a model's ``forward`` names (``transformers.Trainer``) keep them; they are
        passed on only when given (``input_ids`` positionally, as the first input of any model).
        """
        named = {k: v for k, v in (("attention_mask", attention_mask), ("labels", labels))
                 if v is not None}
        leading = () if input_ids is None else (input_ids,)
        with self._batch(adapter_names):
            return self.base_model(*leading, *args, **named, **kwargs)

    def generate(self, *args, adapter_names: list[str] | None = None, **kwargs):
        """The base model's ``generate``, with optional per-sample ``adapter_names``."""
        with self._batch(adapter_names):
            return self.base_model.generate(*args, **kwargs)

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the plain base model inside the ``with`` block (merged adapters are unmerged
        for its duration)."""
        merged = list(self.state.merged)
        self.unmerge_adapter()
        self.state.disabled = True
        try:
            yield
        finally:
            self.state.disabled = False
            for name in merged:
                self.merge_adapter(name)

    def param_groups(self, lr: float, **rates: float) -> list[dict]:
        """Optimiser groups of the active adapter (the trainable one) at ``lr``; ``rates``:
        ``beta_lr_scale`` for MCNC."""
        if self.state.active is None:
            raise ValueError("no active adapter to train; add_adapter() or set_adapter() first")
        return self.adapters[self.state.active].param_groups(lr, **rates)

    def after_step(self) -> None:
        """Call after each optimiser step (keeps MCNC alphas inside their cube)."""
        for source in self.adapters.values():
            source.after_step()

    # -- merging ------------------------------------------------------------------------------
    def _sharers(self, weight: torch.Tensor, layer: AdapterLinear) -> list[str]:
        """The other names under which the base model holds ``weight`` (tied weights, e.g. an
        output head tied to the input embeddings)."""
        own = f"{layer.layer_name}.base_layer.weight"
        return [n for n, p in self.base_model.named_parameters(remove_duplicate=False)
                if p is weight and n != own]

    @torch.no_grad()
    def merge_adapter(self, adapter_name: str | None = None, untie: bool = False) -> None:
        """Add ``scaling * B @ A`` of the adapter (default: the active one) to the base weights.

        A weight the base model shares with another module (an output head tied to the input
        embeddings) would change both: that is refused unless ``untie=True``, which first
        gives the adapted layer its own copy (with a warning; the model then no longer ties
        them, and ``config.tie_word_embeddings`` is set to False).
        """
        name = adapter_name or self.state.active
        if name not in self.adapters:
            raise ValueError(f"no adapter named {name!r}; have {list(self.adapters)}")
        if name in self.state.merged:
            return
        layers = [m for m in self._adapted_layers() if name in m.slots]
        tied = {m.layer_name: s for m in layers if (s := self._sharers(m.float_weight(), m))}
        if tied and not untie:
            layer, sharers = next(iter(tied.items()))
            raise ValueError(f"cannot merge adapter {name!r} into {layer}: its weight is tied "
                             f"to {', '.join(sharers)}, which would change too. Pass "
                             "untie=True to give the layer its own copy first, or serve the "
                             "adapter unmerged")
        for layer in layers:
            if layer.layer_name in tied:
                layer.untie(tied[layer.layer_name])
                config = getattr(self.base_model, "config", None)
                if hasattr(config, "tie_word_embeddings"):
                    config.tie_word_embeddings = False  # so save/reload does not tie them again
        for layer in layers:
            layer.merge(name)
        self.state.merged.append(name)

    @torch.no_grad()
    def unmerge_adapter(self) -> None:
        """Subtract every merged adapter's delta from the base weights again."""
        while self.state.merged:
            name = self.state.merged.pop()
            for layer in self._adapted_layers():
                if name in layer.slots:
                    layer.unmerge(name)

    def merge_and_unload(self, untie: bool = False) -> nn.Module:
        """Merge the active adapter and return the plain base model (adapter layers removed);
        ``untie`` as in :meth:`merge_adapter`."""
        self.merge_adapter(untie=untie)
        for layer_name, module in list(self.base_model.named_modules()):
            if isinstance(module, AdapterLinear):
                parent, _, attr = layer_name.rpartition(".")
                owner = self.base_model.get_submodule(parent) if parent else self.base_model
                setattr(owner, attr, module.base_layer)
        return self.base_model

    # -- state: the adapters only ------------------------------------------------------------
    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """The adapters' trained tensors only (``adapters.<name>.<tensor>``) and each one's
        config as JSON bytes (``adapters.<name>.adapter_config``, uint8): the base model is
        frozen and has its own checkpoint (``base_model.state_dict()``). So a plain
        ``transformers.Trainer`` checkpoints and saves kilobytes instead of the whole model,
        resumes from them, never meets the base's tied weights, and what it saves reloads
        with :meth:`from_pretrained` like an adapter folder."""
        out = self.adapters.state_dict(*args, destination=destination,
                                       prefix=prefix + "adapters.", keep_vars=keep_vars)
        for name, source in self.adapters.items():
            out[f"{prefix}adapters.{name}.{CONFIG_ENTRY}"] = config_bytes(source)
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load what :meth:`state_dict` gives; other keys (a base model's) are refused when
        ``strict``, else reported as unexpected."""
        for name, source in self.adapters.items():
            entry = state_dict.get(f"adapters.{name}.{CONFIG_ENTRY}")
            if entry is not None and not torch.equal(entry, config_bytes(source)):
                raise ValueError(f"the state dict's adapter {name!r} has another config or "
                                 "other layers than this model's; load it with load_adapter")
        own = {k.removeprefix("adapters."): v for k, v in state_dict.items()
               if k.startswith("adapters.") and not k.endswith(f".{CONFIG_ENTRY}")}
        others = [k for k in state_dict if not k.startswith("adapters.")]
        if strict and others:
            raise RuntimeError(f"an AdapterModel's state dict holds its adapters only, got "
                               f"{others[:3]}...; load base weights into .base_model")
        result = self.adapters.load_state_dict(own, strict=strict, assign=assign)
        return type(result)([f"adapters.{k}" for k in result.missing_keys],
                            [f"adapters.{k}" for k in result.unexpected_keys] + others)

    # -- reporting ----------------------------------------------------------------------------
    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def print_trainable_parameters(self) -> None:
        total = sum(p.numel() for p in self.parameters())
        n = self.trainable_count()
        print(f"trainable params: {n:,} || all params: {total:,} || trainable%: "
              f"{100 * n / max(total, 1):.4f}")

    def generation_flops(self, adapter_name: str | None = None) -> int:
        """FLOPs to compute the adapter's factors once (per forward pass when training)."""
        return self.adapters[adapter_name or self.state.active].generation_flops()

    # -- files --------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike,
                        selected_adapters: list[str] | None = None,
                        dtype: torch.dtype = torch.float32) -> Path:
        """Write each adapter to ``save_directory`` (``"default"``) or a sub-folder named after
        it, as ``adapter_config.json`` + ``adapter_model.safetensors`` (see
        :mod:`mcnc.adapters.files`)."""
        root = Path(save_directory)
        base_name = getattr(getattr(self.base_model, "config", None), "name_or_path", None)
        for name in selected_adapters or list(self.adapters):
            if name not in self.adapters:
                raise ValueError(f"no adapter named {name!r}; have {list(self.adapters)}")
            folder = root if name == DEFAULT else root / name
            write_adapter(folder, self.adapters[name], base_name or None, dtype)
        return root

    def load_adapter(self, path: str | os.PathLike, adapter_name: str = DEFAULT,
                     is_trainable: bool = False, **options) -> FactorSource:
        """Add the adapter saved in folder ``path`` under ``adapter_name`` (inactive unless it
        is the first): an adapter folder (:meth:`save_pretrained`'s), or what a plain
        ``transformers.Trainer`` saved (``model.safetensors``: the adapter of that name in it).
        Everything is checked before the model changes.

        Raises:
            FormatError: the files are invalid or do not fit this model.
        """
        self._check_new_name(adapter_name)
        if (Path(path) / TRAINER_WEIGHTS).exists() and not (Path(path) / CONFIG_NAME).exists():
            config, layout, tensors = read_trainer_checkpoint(path, adapter_name)
        else:
            config, layout, tensors, _ = read_adapter(path)
        check_layers_fit(self.base_model, layout.targets)
        source = source_from_tensors(config, layout, tensors, **options)
        self._install(adapter_name, source)
        if not is_trainable:
            source.requires_grad_(False)
        return source

    @torch.no_grad()
    def load_weights(self, path: str | os.PathLike) -> None:
        """Replace the trained values of every adapter by those saved in ``path`` (as
        :meth:`save_pretrained` wrote them: ``default`` in ``path``, others in sub-folders),
        e.g. to resume from a checkpoint. Configs and layouts must match; everything is read
        and checked before any value changes."""
        root, loaded = Path(path), {}
        for name, source in self.adapters.items():
            config, layout, tensors, _ = read_adapter(root if name == DEFAULT else root / name)
            if config != source.config or layout.targets != source.layout.targets:
                raise FormatError(f"{path}: adapter {name!r} there has another config or "
                                  "other layers than this model's; load it with load_adapter")
            check_tensors(source, tensors)
            loaded[name] = tensors
        for name, tensors in loaded.items():
            for key, p in self.adapters[name].stored_tensors().items():
                p.copy_(tensors[key])

    @classmethod
    def from_pretrained(cls, model: nn.Module, path: str | os.PathLike,
                        adapter_name: str = DEFAULT, is_trainable: bool = False,
                        **options) -> AdapterModel:
        """Wrap ``model`` and load the adapter in ``path`` as the active adapter."""
        wrapped = cls(model)
        wrapped.load_adapter(path, adapter_name, is_trainable, **options)
        return wrapped


def get_adapter_model(model: nn.Module, config: AdapterConfig, adapter_name: str = DEFAULT,
                      **options) -> AdapterModel:
    """Freeze ``model`` and add an adapter described by ``config`` (the active one).

    ``model`` is modified in place (targeted layers are wrapped); undo with
    :meth:`AdapterModel.merge_and_unload`.
    """
    wrapped = AdapterModel(model)
    wrapped.add_adapter(adapter_name, config, **options)
    return wrapped
