"""MCNC's own part of a ``.mcnc`` file's metadata: the generator and the config fields, as
:class:`~mcnc.compress.MCNCModel` writes them and as a load reads them back (every value
checked; a bad one raises :class:`~mcnc.core.errors.FormatError`). The format: docs/format.md."""

from __future__ import annotations

from dataclasses import fields

from mcnc.core import rng
from mcnc.core.config import MCNCConfig
from mcnc.core.errors import FormatError
from mcnc.core.generator import GeneratorSpec
from mcnc.core.manifold import MIXINGS

REMOVED_FIELDS = ("layer_chunks", "allocation_power")
"""Version-2 fields of chunks per layer, which mcnc no longer reads (the Hadamard mixing won
on the same held-in cells, and the two could not be combined)."""


def write_mcnc_metadata(config: MCNCConfig, spec: GeneratorSpec, fitted: bool) -> dict:
    """The metadata fields of an MCNC model with ``config`` and generator ``spec``."""
    meta = {"generator": {**spec.to_dict(), "prng": rng.PRNG_NAME, "fitted": fitted},
            "mode": config.mode, "m": config.m, "rank": config.rank, "alpha_bounds": "reflect"}
    if config.mixing != "none":
        meta["mixing"] = config.mixing
    return meta


def mcnc_format_version(config: MCNCConfig) -> int:
    """1 for the paper's MCNC (no mixing, a sine or relu generator), else 2."""
    return 1 if config.mixing == "none" and config.activation != "linear" else 2


def generator_from_meta(meta: dict) -> tuple[GeneratorSpec, bool]:
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


def _mixing_from_meta(meta: dict, spec: GeneratorSpec) -> str:
    """The mixing of a file: a version-2 file has a mixing or a linear generator, a version-1
    file neither (and no key means no mixing)."""
    if removed := [name for name in REMOVED_FIELDS if name in meta]:
        raise FormatError(f"the file gives every layer chunks of its own ({', '.join(removed)})"
                          ", an option this mcnc no longer has; reconstruct it with mcnc 0.1.0 "
                          "(commit ef03cb3) and compress the weights again")
    new = "mixing" in meta or spec.activation == "linear"
    if new != (meta["format_version"] == 2):
        raise FormatError("a version-2 file has a mixing or a linear generator, a version-1 "
                          "file neither")
    mixing = meta.get("mixing", "none")
    if mixing not in MIXINGS or meta.get("mixing") == "none":
        raise FormatError(f"unknown mixing {meta['mixing']!r}; this mcnc knows 'hadamard'")
    return mixing


def mcnc_config_from_meta(meta: dict) -> MCNCConfig:
    """The :class:`MCNCConfig` a file's metadata describes."""
    spec, _ = generator_from_meta(meta)
    if meta["alpha_bounds"] != "reflect":
        raise FormatError(f"unknown alpha bound handling {meta['alpha_bounds']!r}")
    return MCNCConfig(**spec.to_dict(), mode=meta["mode"], m=meta["m"], rank=meta["rank"],
                      train_dense=meta["train_dense"], mixing=_mixing_from_meta(meta, spec))
