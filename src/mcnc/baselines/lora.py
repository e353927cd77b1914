"""LoRA (Hu et al., ICLR 2022): every selected matrix is ``theta0 + B @ A`` with trained
rank-r factors (delta mode, for fine-tuning), or just ``B @ A`` (scratch mode: a low-rank
network trained from scratch). Parameters too small to gain from factoring (biases, small
matrices) are trained whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mcnc.core import rng
from mcnc.core.config import FactoredSelection
from mcnc.core.errors import FormatError
from mcnc.core.initialisation import seeded_init
from mcnc.core.layout import Layout, plan_layout
from mcnc.core.limits import MAX_SEED, is_int
from mcnc.core.reparam import Reparameterized, check_float32, flat_values


@dataclass(frozen=True)
class LoRAConfig(FactoredSelection):
    """LoRA with factors of rank ``rank``."""

    rank: int = 4
    """Rank r of ``B @ A``."""
    seed: int = 0
    """Seed of the initial factors."""


def initial_factors(layout: Layout, config: LoRAConfig) -> torch.Tensor:
    """Scratch: every entry at its default scale (so ``B @ A`` starts like a default init).
    Delta: ``A`` as in scratch, ``B`` and whole parameters 0, so the model starts at the base."""
    flat = seeded_init(layout, config.seed, rng.LORA_FACTOR_INIT_STREAM)
    if config.mode == "delta":
        for t in layout.targets:
            a = 0 if t.rank is None else t.rank * t.matrix_shape[1]
            flat[t.offset + a : t.offset + t.size] = 0
    return flat


class LoRAModel(Reparameterized):
    """Selected weights from trained low-rank factors, all held in one flat ``factors`` tensor
    laid out like :class:`~mcnc.core.layout.Layout` (``A`` then ``B`` per target)."""

    method = "lora"

    def __init__(self, base: nn.Module, layout: Layout, config: LoRAConfig):
        theta0 = None
        if config.mode == "delta":
            theta0 = flat_values(layout, dict(base.named_parameters()))
        super().__init__(base, layout, config, theta0)
        self.factors = nn.Parameter(initial_factors(layout, config))
        self._refresh()

    def method_tensors(self) -> dict[str, torch.Tensor]:
        return {"factors": self.factors}

    def generated_flat(self) -> torch.Tensor:
        return self.factors

    def file_metadata(self) -> dict:
        return {"mode": self.config.mode, "rank": self.config.rank, "seed": self.config.seed}

    @classmethod
    def config_from_file(cls, meta: dict) -> LoRAConfig:
        if not is_int(meta["seed"], 0, MAX_SEED):
            raise FormatError(f"seed must be an integer in [0, 2**64), got {meta['seed']!r}")
        return LoRAConfig(mode=meta["mode"], rank=meta["rank"], seed=meta["seed"],
                          train_dense=meta["train_dense"])

    @classmethod
    def expected_tensors(cls, config, layout, meta) -> dict[str, tuple[int, ...]]:
        return {"lora.factors": (layout.total,)}

    @classmethod
    def from_file(cls, skeleton, layout, config, tensors) -> LoRAModel:
        return lora(skeleton, config, layout)

    def extra_repr(self) -> str:
        return f"mode={self.config.mode}, rank={self.config.rank}, trained={self.layout.total}"


def lora(model: nn.Module, config: LoRAConfig | None = None, layout: Layout | None = None
         ) -> LoRAModel:
    """Reparameterise ``model`` with LoRA factors (in place, like :func:`mcnc.compress`)."""
    config = config or LoRAConfig()
    if isinstance(model, Reparameterized):
        raise ValueError("this model is already compressed; start from the original model")
    layout = layout or plan_layout(model, config)
    device = check_float32(model, layout)
    return LoRAModel(model, layout, config).to(device)
