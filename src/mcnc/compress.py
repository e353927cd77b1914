"""Reparameterise any ``nn.Module``: its selected weights become ``beta * phi(alpha)`` chunks.

    flat   = concat(selected parameters or their low-rank factors)       (length N)
    flat   = the one region of a chunked manifold (mcnc.core.manifold)        (scratch, lowrank)
    theta  = theta0 + generated                                           (delta)

All chunks come from one batched generator call. Parameters are cut back out of the flat
vector and installed on their modules as plain tensors before the wrapped model runs, so the
result behaves as an ordinary module.
"""

from __future__ import annotations

import torch
from torch import nn

from mcnc.core import rng
from mcnc.core.config import MCNCConfig
from mcnc.core.errors import FormatError
from mcnc.core.generator import Generator, seeded_weights_shapes
from mcnc.core.initialisation import target_std
from mcnc.core.layout import Layout, plan_layout
from mcnc.core.limits import MAX_NUMBERS, check_work
from mcnc.core.manifold import (
    ChunkedManifold,
    HoldsManifold,
    Region,
    chunk_count,
    expected_shapes,
)
from mcnc.core.reparam import Reparameterized, check_float32, flat_values
from mcnc.metadata import (
    generator_from_meta,
    mcnc_config_from_meta,
    mcnc_format_version,
    write_mcnc_metadata,
)


def weights_region(layout: Layout, params: dict[str, torch.Tensor], config: MCNCConfig
                   ) -> Region:
    """The selected weights end to end as one region of the manifold.

    Unmixed, entries start with the mean square of their parameter's current (default-initialised)
    values; a rank-r product ``B @ A`` of factors with entry variance ``s`` has entries of
    variance ``r s**2``, so factor entries get ``s = sqrt(ms / r)``. In ``delta`` mode the
    region starts at zero, so training starts from the pretrained model. Mixed entries are
    scaled to their layer's spread at PyTorch's default initialisation."""
    start = None
    if config.mode != "delta" and config.mixing == "none":  # mixed: the spreads set the start
        pieces = []
        for t in layout.targets:
            ms = params[t.name].detach().float().pow(2).mean()
            per_element = ms if t.rank is None else (ms / t.rank).sqrt()
            pieces.append(per_element.expand(t.size))
        start = torch.cat(pieces)
    spreads = tuple((t.size, std) for t, std in zip(layout.targets, target_std(layout),
                                                    strict=True))
    return Region(layout.total, spreads=spreads, start_mean_squares=start,
                  mixing_streams=(rng.MIXING_SIGN_STREAM, rng.MIXING_PERMUTATION_STREAM),
                  starts_at_zero=config.mode == "delta")


class MCNCModel(HoldsManifold, Reparameterized):
    """A model whose selected weights are generated from ``alpha`` (n, m, k) and ``beta`` (n, m)
    of a :class:`~mcnc.core.manifold.ChunkedManifold`.

    ``parameters()`` yields exactly ``alpha``, ``beta`` and the dense leftovers that train
    (normalisation layers in scratch/lowrank mode). See :class:`~mcnc.core.reparam.Reparameterized`
    for the caching of generated weights.
    """

    method = "mcnc"

    def __init__(self, base: nn.Module, layout: Layout, config: MCNCConfig,
                 generator: Generator):
        params = dict(base.named_parameters())
        theta0 = flat_values(layout, params) if config.mode == "delta" else None
        super().__init__(base, layout, config, theta0)
        self.manifold = ChunkedManifold(generator, [weights_region(layout, params, config)],
                                        config.m, config.mixing, config.seed,
                                        config.alpha_init_scale)
        self._modules["base"] = self._modules.pop("base")  # alpha and beta listed first
        self._refresh()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints written before the manifold was a submodule name ``alpha`` and ``beta``
        at the top level."""
        for name in ("alpha", "beta"):
            if prefix + name in state_dict:
                state_dict[f"{prefix}manifold.{name}"] = state_dict.pop(prefix + name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def method_tensors(self) -> dict[str, torch.Tensor]:
        return {"alpha": self.alpha, "beta": self.beta}

    def generated_flat(self) -> torch.Tensor:
        return self.manifold()[0]

    def method_param_groups(self, lr: float, **rates) -> list[dict]:
        """alpha at ``lr``, beta at a rate of its own (``rates``: ``beta_lr_scale``,
        ``beta_rate``; :meth:`~mcnc.core.manifold.ChunkedManifold.param_groups`)."""
        return self.manifold_groups(lr, rates, super().method_param_groups)

    def after_step(self) -> None:
        self.manifold.after_step()

    def fold_alphas_(self) -> MCNCModel:
        """Reflect the stored alphas into [-L, L] in place; the model's output is unchanged."""
        self.manifold.after_step()
        return self

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"mcnc.alpha": self.manifold.folded_alpha(), "mcnc.beta": self.beta}
        if self.generator.fitted:
            tensors |= {f"generator.{i}": w for i, w in enumerate(self.generator.weights)}
        return tensors

    def file_metadata(self) -> dict:
        return write_mcnc_metadata(self.config, self.generator.spec, self.generator.fitted)

    def format_version(self) -> int:
        return mcnc_format_version(self.config)

    @classmethod
    def config_from_file(cls, meta: dict) -> MCNCConfig:
        return mcnc_config_from_meta(meta)

    @classmethod
    def expected_tensors(cls, config: MCNCConfig, layout: Layout, meta: dict
                         ) -> dict[str, tuple[int, ...]]:
        n = chunk_count([Region(layout.total)], config.d)
        if n * config.d > MAX_NUMBERS:
            raise FormatError(f"{n:,} chunks of {config.d:,} numbers exceed the "
                              f"{MAX_NUMBERS:,} numbers a file may describe; the file is "
                              "corrupt or hostile")
        check_work(n * config.m * config.generator_spec().weight_count(), "multiply-adds")
        shapes = {f"mcnc.{name}": shape
                  for name, shape in expected_shapes(n, config.m, config.k).items()}
        if generator_from_meta(meta)[1]:
            shapes |= {f"generator.{i}": tuple(shape)
                       for i, shape in enumerate(seeded_weights_shapes(config))}
        return shapes

    @classmethod
    def from_file(cls, skeleton: nn.Module, layout: Layout, config: MCNCConfig,
                  tensors: dict[str, torch.Tensor]) -> MCNCModel:
        spec = config.generator_spec()
        weights = None
        if "generator.0" in tensors:
            weights = [tensors[f"generator.{i}"].float()
                       for i in range(len(seeded_weights_shapes(spec)))]
        return wrap(skeleton, layout, config, Generator(spec, weights))

    def extra_repr(self) -> str:
        c = self.config
        return (f"mode={c.mode}, chunks={self.alpha.shape[0]}, m={c.m}, k={c.k}, d={c.d}, "
                f"L={c.L}, generated={self.layout.total}")


def compress(model: nn.Module, config: MCNCConfig | None = None,
             generator: Generator | None = None) -> MCNCModel:
    """Reparameterise ``model`` with MCNC and return the wrapping :class:`MCNCModel`.

    ``model`` is modified in place: its selected parameters are removed (they are generated
    from now on). In ``scratch`` and ``lowrank`` mode their current values only set the initial
    amplitudes; in ``delta`` mode they become the frozen ``theta0``.

    Args:
        model: any module; its parameters should be float32.
        config: what to compress and how (defaults to :class:`MCNCConfig()`).
        generator: a generator to use instead of the seeded one (e.g. one fitted with
            :func:`mcnc.apps.coverage.fit_generator`); its spec must match ``config``.
    """
    config = config or MCNCConfig()
    if isinstance(model, MCNCModel):
        raise ValueError("this model is already compressed; compress the original model")
    spec = config.generator_spec()
    if generator is None:
        generator = Generator(spec)
    elif generator.spec != spec:
        raise ValueError(f"the generator's spec {generator.spec} does not match the config's "
                         f"{spec}; build the config from the same k, d, L, width, depth, seed")
    return wrap(model, plan_layout(model, config), config, generator)


def wrap(model: nn.Module, layout: Layout, config: MCNCConfig, generator: Generator
         ) -> MCNCModel:
    """Build the :class:`MCNCModel` on the device ``model`` is on (float32 parameters only)."""
    device = check_float32(model, layout)
    return MCNCModel(model, layout, config, generator).to(device)
