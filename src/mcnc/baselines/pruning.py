"""Global magnitude pruning: keep the ``nonzeros`` selected weights of largest magnitude
(over all selected parameters together), zero the rest, and retrain the survivors.

The file stores the surviving values and their positions in the flat vector as int32
(``pruning.kept_index``): 4 bytes of index per value, counted in every size we report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from mcnc.core.config import Selection
from mcnc.core.errors import FormatError
from mcnc.core.layout import Layout, plan_layout
from mcnc.core.limits import check_positive_ints
from mcnc.core.reparam import Reparameterized, check_float32, flat_values


@dataclass(frozen=True)
class PruningConfig(Selection):
    """Keep ``nonzeros`` of the selected weights (scratch mode only: the survivors are the
    weights, not a change to them)."""

    MODES: ClassVar[tuple[str, ...]] = ("scratch",)

    nonzeros: int = 1000
    """Weights kept (the budget)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_ints(nonzeros=self.nonzeros)


def largest(values: torch.Tensor, count: int) -> torch.Tensor:
    """Sorted positions of the ``count`` entries of largest magnitude (ties: lower index)."""
    if count > values.numel():
        raise ValueError(f"cannot keep {count} of {values.numel()} weights")
    order = torch.sort(values.abs(), descending=True, stable=True).indices
    return order[:count].sort().values


class PrunedModel(Reparameterized):
    """Selected weights are zero except at ``kept_index``, where they are ``values``."""

    method = "pruning"

    def __init__(self, base: nn.Module, layout: Layout, config: PruningConfig,
                 kept: torch.Tensor | None = None):
        flat = flat_values(layout, dict(base.named_parameters()))
        super().__init__(base, layout, config)
        kept = largest(flat, config.nonzeros) if kept is None else kept.long()
        self.register_buffer("kept_index", kept)
        self.values = nn.Parameter(flat[kept].clone())
        self._refresh()

    def method_tensors(self) -> dict[str, torch.Tensor]:
        return {"values": self.values}

    def generated_flat(self) -> torch.Tensor:
        return self.values.new_zeros(self.layout.total).scatter(0, self.kept_index, self.values)

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        return {"pruning.values": self.values, "pruning.kept_index": self.kept_index.int()}

    def file_metadata(self) -> dict:
        return {"mode": self.config.mode, "nonzeros": self.config.nonzeros}

    @classmethod
    def config_from_file(cls, meta: dict) -> PruningConfig:
        return PruningConfig(mode=meta["mode"], nonzeros=meta["nonzeros"],
                             train_dense=meta["train_dense"])

    @classmethod
    def expected_tensors(cls, config, layout, meta) -> dict[str, tuple[int, ...]]:
        return {"pruning.values": (config.nonzeros,), "pruning.kept_index": (config.nonzeros,)}

    @classmethod
    def check_tensors(cls, config, layout, tensors) -> None:
        kept = tensors["pruning.kept_index"].long()
        if len(kept) and (kept[0] < 0 or kept[-1] >= layout.total
                          or (kept[1:] <= kept[:-1]).any()):
            raise FormatError(f"pruning.kept_index must be increasing positions in "
                              f"[0, {layout.total})")

    @classmethod
    def from_file(cls, skeleton, layout, config, tensors) -> PrunedModel:
        return prune(skeleton, config, tensors["pruning.kept_index"], layout)

    def extra_repr(self) -> str:
        return f"nonzeros={self.config.nonzeros} of {self.layout.total}"


def prune(model: nn.Module, config: PruningConfig | None = None,
          kept: torch.Tensor | None = None, layout: Layout | None = None) -> PrunedModel:
    """Prune ``model`` (in place) to its ``config.nonzeros`` largest selected weights, or to
    the positions ``kept`` (from a checkpoint or a file, with its ``layout``) if given."""
    config = config or PruningConfig()
    if isinstance(model, Reparameterized):
        raise ValueError("this model is already compressed; start from the original model")
    layout = layout or plan_layout(model, config)
    device = check_float32(model, layout)
    return PrunedModel(model, layout, config, kept).to(device)
