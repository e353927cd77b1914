"""Reparameterise any ``nn.Module``: its selected weights become ``beta * phi(alpha)`` chunks.

    flat   = concat(selected parameters or their low-rank factors)       (length N)
    chunks = flat, zero-padded to n = ceil(N / d) chunks of d
    chunk j = sum_i beta[j, i] * phi(fold(alpha[j, i])),  i < m           (scratch, lowrank)
    theta  = theta0 + generated                                           (delta)

All chunks come from one batched generator call. Parameters are cut back out of the flat
vector (padding discarded, nothing dropped) and installed on their modules as plain tensors
before the wrapped model runs, so the result behaves as an ordinary module.
"""

from __future__ import annotations

import math
from dataclasses import fields, replace

import torch
from torch import nn

from mcnc import rng
from mcnc.allocation import (
    chunk_counts,
    covering_chunk_size,
    fold_onto_layers,
    group_sizes,
    layer_groups,
    layer_sizes,
)
from mcnc.config import MIXINGS, MCNCConfig
from mcnc.errors import FormatError
from mcnc.generator import Generator, GeneratorSpec, initial_alpha, seeded_weights_shapes
from mcnc.initialisation import element_std, seeded_init
from mcnc.layout import Layout, plan_layout
from mcnc.limits import MAX_NUMBERS, check_work, is_int, is_number
from mcnc.mixing import SeededMixing, mixed_entry_scale, padded_length
from mcnc.reparam import Reparameterized, check_float32, flat_values


def _spec_from_meta(meta: dict) -> tuple[GeneratorSpec, bool]:
    """The generator spec of a file's metadata and whether fitted weights are stored."""
    g = meta["generator"]
    if not isinstance(g, dict):
        raise FormatError("generator must be a JSON object")
    g = dict(g)
    prng, fitted = g.pop("prng", None), g.pop("fitted", None)
    if prng != rng.PRNG_NAME:
        raise FormatError(f"unknown pseudo-random generator {prng!r}; this mcnc reads "
                          f"{rng.PRNG_NAME!r}")
    if not isinstance(fitted, bool):
        raise FormatError(f"generator.fitted must be true or false, got {fitted!r}")
    missing = {f.name for f in fields(GeneratorSpec)} - set(g)
    if missing:
        raise FormatError(f"the generator spec lacks {sorted(missing)}")
    return GeneratorSpec.from_dict(g), fitted


def chunks_per_layer(layout: Layout, config: MCNCConfig) -> tuple[list[int], list[int]] | None:
    """(chunks, generated numbers) per layer when every layer has chunks of its own
    (``config.per_layer``); ``None`` when the flat vector is cut end to end (see
    :mod:`mcnc.allocation`). Raises ValueError when the chunks cannot cover their layers."""
    if not config.per_layer:
        return None
    if config.layer_chunks is None:
        sizes = layer_sizes(layout)
        return chunk_counts(sizes, config.d, config.allocation_power), sizes
    sizes = group_sizes(layout, [targets for targets, _ in config.layer_chunks])
    counts = [chunks for _, chunks in config.layer_chunks]
    if covering_chunk_size(sizes, counts) > config.d:
        raise ValueError(f"{counts} chunks of d={config.d} cannot cover layers of {sizes} "
                         f"numbers; use d >= {covering_chunk_size(sizes, counts)}")
    return counts, sizes


def chunk_total(layout: Layout, config: MCNCConfig,
                per_layer: tuple[list[int], list[int]] | None) -> int:
    """The number of chunks: ``ceil(total / d)`` cut end to end, else the layers' sum."""
    return layout.n_chunks(config.d) if per_layer is None else sum(per_layer[0])


def _version_2_from_meta(meta: dict, spec: GeneratorSpec) -> dict:
    """The config fields of format version 2 (``layer_chunks`` with ``allocation_power``, and
    ``mixing``): a version-2 file has at least one of them or a linear generator, a version-1
    file none."""
    new = "layer_chunks" in meta or "mixing" in meta or spec.activation == "linear"
    if new != (meta["format_version"] == 2):
        raise FormatError("a version-2 file has layer_chunks, mixing or a linear generator, "
                          "a version-1 file none of them")
    fields = {"mixing": meta.get("mixing", "none")}  # a file without the key is unmixed
    if fields["mixing"] not in MIXINGS or meta.get("mixing") == "none":
        raise FormatError(f"unknown mixing {meta['mixing']!r}; this mcnc knows 'hadamard'")
    if "layer_chunks" not in meta:
        return fields
    groups, power = meta["layer_chunks"], meta.get("allocation_power")
    if not (isinstance(groups, list) and groups and all(
            isinstance(g, dict) and set(g) == {"targets", "chunks"}
            and is_int(g["targets"], 1, MAX_NUMBERS) and is_int(g["chunks"], 1, MAX_NUMBERS)
            for g in groups)):
        raise FormatError("layer_chunks must be a non-empty list of objects with positive "
                          "integers 'targets' and 'chunks'")
    if not is_number(power, -1e-12, 1 + 1e-12):
        raise FormatError(f"allocation_power must be a number in [0, 1], got {power!r}")
    return fields | {"allocation_power": power,
                     "layer_chunks": tuple((g["targets"], g["chunks"]) for g in groups)}


def initial_beta(layout: Layout, params: dict[str, torch.Tensor], config: MCNCConfig,
                 scale: torch.Tensor | None = None,
                 per_layer: tuple[list[int], list[int]] | None = None) -> torch.Tensor:
    """Amplitudes that give every chunk the norm the model's own initialisation would have.

    For a directly generated parameter each element should have the mean square of the
    parameter's current (default-initialised) values; a rank-r product ``B @ A`` of factors
    with element variance ``s`` has element variance ``r * s**2``, so factor elements get
    ``s = sqrt(ms / r)``. beta of chunk j is ``sqrt(sum of those over the chunk / m)``, since
    m random unit directions add up to a norm of about ``sqrt(m) * beta``. With chunks per
    layer (``allocation_power < 1``) a layer's c chunks share its sum of squares, so each gets
    ``sqrt(sum / (c m))``. With ``mixing`` every beta is ``s sqrt(D / (n m))``, so that the
    mixed entries have spread s before their layer's scale (see :mod:`mcnc.mixing`). In
    ``delta`` mode beta starts at 0, so training starts from the pretrained model. With a
    per-entry ``scale`` (``layer_scale``) each entry's mean square is divided by its scale
    squared, since the generated entry is multiplied by it.

    ``per_layer`` is :func:`chunks_per_layer` of ``layout`` and ``config``.

    Returns:
        (n_chunks, m) tensor.
    """
    n, d = chunk_total(layout, config, per_layer), config.d
    if config.mode == "delta":
        return torch.zeros(n, config.m)
    if config.mixing != "none":  # mixed entries of spread s; generated_flat scales per layer
        spread = mixed_entry_scale(layout)[1]
        return torch.full((n, config.m), spread * math.sqrt(padded_length(n * d) / (n * config.m)))
    pieces = []
    for t in layout.targets:
        ms = params[t.name].detach().float().pow(2).mean()
        per_element = ms if t.rank is None else (ms / t.rank).sqrt()
        pieces.append(per_element.expand(t.size))
    mean_squares = torch.cat(pieces)
    if per_layer is None:
        mean_squares = torch.cat([mean_squares, torch.zeros(n * d - layout.total)])
        if scale is not None:
            mean_squares = mean_squares / scale.pow(2)
        per_chunk = mean_squares.view(n, d).sum(dim=1)
    else:
        counts, sizes = per_layer
        per_chunk = torch.cat([s.sum().div(c).expand(c) for s, c in
                               zip(torch.split(mean_squares, sizes), counts, strict=True)])
    return (per_chunk / config.m).sqrt().unsqueeze(1).expand(n, config.m).clone()


class MCNCModel(Reparameterized):
    """A model whose selected weights are generated from ``alpha`` (n, m, k) and ``beta`` (n, m).

    ``parameters()`` yields exactly ``alpha``, ``beta`` and the dense leftovers that train
    (normalisation layers in scratch/lowrank mode). See :class:`~mcnc.reparam.Reparameterized`
    for the caching of generated weights.
    """

    method = "mcnc"

    def __init__(self, base: nn.Module, layout: Layout, config: MCNCConfig,
                 generator: Generator):
        params = dict(base.named_parameters())
        theta0 = flat_values(layout, params) if config.mode == "delta" else None
        if config.offset == "seeded":
            direct = Layout(tuple(replace(t, rank=None) for t in layout.targets),
                            layout.state_keys)  # theta0 has the weights' own shapes
            theta0 = seeded_init(direct, config.seed, rng.MCNC_OFFSET_STREAM)
        super().__init__(base, layout, config, theta0)
        self.per_layer = chunks_per_layer(layout, config)
        n_chunks = chunk_total(layout, config, self.per_layer)
        self.generator = generator
        scale = None
        if config.layer_scale:
            scale = torch.cat([element_std(layout),
                               torch.ones(n_chunks * config.d - layout.total)])
        self.mixing = None
        if config.mixing != "none":
            self.mixing = SeededMixing(n_chunks * config.d, layout.total, config.seed)
            scale = mixed_entry_scale(layout)[0]
        self.register_buffer("entry_scale", scale, persistent=False)
        self.alpha = nn.Parameter(initial_alpha(generator.spec, n_chunks, config.m,
                                                config.alpha_init_scale))
        self.beta = nn.Parameter(initial_beta(layout, params, config, scale, self.per_layer))
        self._refresh()

    def method_tensors(self) -> dict[str, torch.Tensor]:
        return {"alpha": self.alpha, "beta": self.beta}

    def generated_flat(self) -> torch.Tensor:
        chunks = self.generator.chunks(self.alpha, self.beta)
        if self.per_layer is not None:
            return fold_onto_layers(chunks, *self.per_layer)
        flat = chunks.reshape(-1)
        if self.mixing is not None:
            flat = self.mixing(flat)
        return flat if self.entry_scale is None else flat * self.entry_scale

    def after_step(self) -> None:
        self.fold_alphas_()

    @torch.no_grad()
    def fold_alphas_(self) -> MCNCModel:
        """Reflect the stored alphas into [-L, L] in place; the model's output is unchanged."""
        self.alpha.copy_(self.generator.fold(self.alpha))
        return self

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            alpha = self.generator.fold(self.alpha)
        tensors = {"mcnc.alpha": alpha, "mcnc.beta": self.beta}
        if self.generator.fitted:
            tensors |= {f"generator.{i}": w for i, w in enumerate(self.generator.weights)}
        return tensors

    def file_metadata(self) -> dict:
        c = self.config
        if c.experimental:
            raise ValueError(f"{', '.join(c.experimental)} are experimental training options "
                             "that an .mcnc file cannot record yet; train without them to save")
        meta = {"generator": {**self.generator.spec.to_dict(), "prng": rng.PRNG_NAME,
                              "fitted": self.generator.fitted},
                "mode": c.mode, "m": c.m, "rank": c.rank, "alpha_bounds": "reflect"}
        if self.per_layer is not None:
            groups = layer_groups(self.layout) if c.layer_chunks is None else [
                targets for targets, _ in c.layer_chunks]
            meta |= {"allocation_power": c.allocation_power,
                     "layer_chunks": [{"targets": targets, "chunks": chunks} for targets, chunks
                                      in zip(groups, self.per_layer[0], strict=True)]}
        if c.mixing != "none":
            meta["mixing"] = c.mixing
        return meta

    def format_version(self) -> int:
        plain = (self.per_layer is None and self.config.mixing == "none"
                 and self.config.activation != "linear")
        return 1 if plain else 2

    @classmethod
    def config_from_file(cls, meta: dict) -> MCNCConfig:
        spec, _ = _spec_from_meta(meta)
        if meta["alpha_bounds"] != "reflect":
            raise FormatError(f"unknown alpha bound handling {meta['alpha_bounds']!r}")
        return MCNCConfig(**spec.to_dict(), mode=meta["mode"], m=meta["m"], rank=meta["rank"],
                          train_dense=meta["train_dense"], **_version_2_from_meta(meta, spec))

    @classmethod
    def expected_tensors(cls, config: MCNCConfig, layout: Layout, meta: dict
                         ) -> dict[str, tuple[int, ...]]:
        try:
            per_layer = chunks_per_layer(layout, config)
        except ValueError as e:
            raise FormatError(f"layer_chunks do not fit the layout: {e}") from e
        n = chunk_total(layout, config, per_layer)
        if n * config.d > MAX_NUMBERS:
            raise FormatError(f"{n:,} chunks of {config.d:,} numbers exceed the "
                              f"{MAX_NUMBERS:,} numbers a file may describe; the file is "
                              "corrupt or hostile")
        check_work(n * config.m * config.generator_spec().weight_count(), "multiply-adds")
        shapes = {"mcnc.alpha": (n, config.m, config.k), "mcnc.beta": (n, config.m)}
        if _spec_from_meta(meta)[1]:
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
            :func:`mcnc.coverage.fit_generator`); its spec must match ``config``.
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
