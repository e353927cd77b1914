"""The ``.mcnc`` file: one safetensors file, no pickle.

Tensors:
    ``mcnc.alpha`` (n, m, k) and ``mcnc.beta`` (n, m), float32, float16 or bfloat16;
    ``dense.<state key>`` for every state entry stored as it is (buffers, trained dense params);
    ``generator.<i>`` only for a fitted generator (a seeded one is rebuilt from its seed).

Metadata: the safetensors ``__metadata__`` entry ``"mcnc"`` holds a JSON object with the format
version, the generator spec, the mode, the layout, a SHA-256 of the tensor payload and a
SHA-256 of the metadata's canonical JSON, so a flipped bit anywhere in the file is detected.
Files are written atomically (temporary file, fsync, rename), and a load checks everything
before it changes anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from mcnc import rng
from mcnc.compress import MCNCModel, fold_into_cube, generate_flat, wrap
from mcnc.config import MCNCConfig
from mcnc.generator import Generator, GeneratorSpec, seeded_weights_shapes
from mcnc.layout import Layout, layout_mismatches, materialize

FORMAT_NAME = "mcnc"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 64 << 20
STORAGE_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


class FormatError(ValueError):
    """The file is not a valid .mcnc file, or does not fit the model it is loaded into."""


# -- writing --------------------------------------------------------------------------------
def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors sorted by name: name, dtype, shape, then raw little-endian bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def metadata_digest(meta: dict) -> str:
    """SHA-256 of the metadata's canonical JSON (sorted keys), ``metadata_sha256`` left out."""
    rest = {k: v for k, v in meta.items() if k != "metadata_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def base_digest(theta0: torch.Tensor) -> str:
    """Fingerprint of the frozen base weights a delta was trained on (float32 bytes)."""
    return tensor_digest({"theta0": theta0.float()})


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` so that ``path`` holds either its old content or all of the new."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def to_bytes(model: MCNCModel, dtype: torch.dtype = torch.float32) -> bytes:
    """The .mcnc file content for ``model`` (see :func:`save`)."""
    if not isinstance(model, MCNCModel):
        raise TypeError(f"expected an MCNCModel (from mcnc.compress), got {type(model)}")
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {list(STORAGE_DTYPES)}, got {dtype}")
    with torch.no_grad():
        tensors = {"mcnc.alpha": fold_into_cube(model.alpha, model.config.L).to(dtype),
                   "mcnc.beta": model.beta.to(dtype)}
    tensors |= {f"dense.{k}": v for k, v in model.dense_leftovers().items()}
    if model.generator.fitted:
        tensors |= {f"generator.{i}": w for i, w in enumerate(model.generator.weights)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    c = model.config
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "generator": {**model.generator.spec.to_dict(), "prng": rng.PRNG_NAME,
                      "fitted": model.generator.fitted},
        "mode": c.mode,
        "m": c.m,
        "rank": c.rank,
        "train_dense": c.trains_dense,
        "alpha_bounds": "reflect",
        "layout": model.layout.to_dict(),
        "dense": sorted(k.removeprefix("dense.") for k in tensors if k.startswith("dense.")),
        "base_sha256": base_digest(model.theta0) if model.theta0 is not None else None,
        "payload_sha256": tensor_digest(tensors),
    }
    meta["metadata_sha256"] = metadata_digest(meta)
    return safetensors.torch.save(tensors, metadata={"mcnc": json.dumps(meta)})


def save(model: MCNCModel, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model`` to ``path`` atomically.

    Args:
        model: a model returned by :func:`mcnc.compress` or :func:`mcnc.load`.
        dtype: storage type of alpha and beta: float32 (exact), float16 or bfloat16.
    """
    return atomic_write(path, to_bytes(model, dtype))


# -- reading --------------------------------------------------------------------------------
def _parse_header(data: bytes) -> dict:
    if len(data) < 8:
        raise FormatError(f"the file is {len(data)} bytes long: too short to be a .mcnc file")
    n = int.from_bytes(data[:8], "little")
    if n > min(len(data) - 8, MAX_HEADER_BYTES):
        raise FormatError(f"the header claims {n} bytes but the file has {len(data) - 8} after "
                          "the length field: the file is truncated or not a .mcnc file")
    try:
        header = json.loads(data[8 : 8 + n])
        meta = json.loads(header["__metadata__"]["mcnc"])
    except (ValueError, KeyError, TypeError) as e:
        raise FormatError(f"no readable mcnc metadata in the header ({e}); is this a .mcnc "
                          "file written by mcnc.save?") from e
    if not isinstance(meta, dict):
        raise FormatError("the mcnc metadata is not a JSON object")
    return meta


def _check_version(meta: dict) -> None:
    if meta.get("format") != FORMAT_NAME:
        raise FormatError(f"metadata says format {meta.get('format')!r}, expected 'mcnc'")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        hint = "upgrade mcnc to read it" if isinstance(version, int) and version > \
            FORMAT_VERSION else "the file is damaged or not from mcnc"
        raise FormatError(f"format version {version!r} is not supported (this mcnc reads "
                          f"version {FORMAT_VERSION}); {hint}")


def _spec_from_meta(meta: dict) -> tuple[GeneratorSpec, bool]:
    g = dict(meta["generator"])
    if g.pop("prng") != rng.PRNG_NAME:
        raise FormatError(f"unknown pseudo-random generator {meta['generator']['prng']!r}")
    fitted = g.pop("fitted")
    return GeneratorSpec.from_dict(g), bool(fitted)


def _expect_shape(tensors: dict, name: str, shape: tuple[int, ...]) -> None:
    if name not in tensors:
        raise FormatError(f"tensor {name!r} is missing")
    t = tensors[name]
    if tuple(t.shape) != shape:
        raise FormatError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
    if not t.is_floating_point() or not torch.isfinite(t).all():
        raise FormatError(f"tensor {name!r} must hold finite floating-point values")


def _check_contents(meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    config = _config_from(meta)  # validates the generator spec, mode, m and rank
    _, fitted = _spec_from_meta(meta)
    layout = Layout.from_dict(meta["layout"])
    if meta["alpha_bounds"] != "reflect":
        raise FormatError(f"unknown alpha bound handling {meta['alpha_bounds']!r}")
    if not isinstance(meta["train_dense"], bool):
        raise FormatError("train_dense must be true or false")
    offset = 0
    for t in layout.targets:
        if t.offset != offset or t.size <= 0 or (t.rank is not None and t.rank < 1):
            raise FormatError(f"layout entry {t.name!r} is inconsistent (offset {t.offset}, "
                              f"expected {offset})")
        offset += t.size
    unknown = (layout.target_names() | set(meta["dense"])) - set(layout.state_keys)
    if unknown:
        raise FormatError(f"the layout names tensors that are not state keys: {sorted(unknown)}")
    n = layout.n_chunks(config.d)
    _expect_shape(tensors, "mcnc.alpha", (n, config.m, config.k))
    _expect_shape(tensors, "mcnc.beta", (n, config.m))
    expected = {"mcnc.alpha", "mcnc.beta"} | {f"dense.{k}" for k in meta["dense"]}
    if fitted:
        for i, shape in enumerate(seeded_weights_shapes(config)):
            _expect_shape(tensors, f"generator.{i}", tuple(shape))
            expected.add(f"generator.{i}")
    if set(tensors) != expected:
        raise FormatError(f"unexpected tensors {sorted(set(tensors) ^ expected)[:5]}")


def read(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read and fully validate a .mcnc file.

    Returns:
        (tensors by name, metadata dict).

    Raises:
        FormatError: truncated, corrupted, wrong version or malformed.
        FileNotFoundError: no such file.
    """
    data = Path(path).read_bytes()
    meta = _parse_header(data)
    _check_version(meta)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own error types for every malformation
        raise FormatError(f"{path}: the safetensors structure is invalid ({e})") from e
    if metadata_digest(meta) != meta.get("metadata_sha256"):
        raise FormatError(f"{path}: metadata checksum mismatch, the header is corrupted")
    if tensor_digest(tensors) != meta.get("payload_sha256"):
        raise FormatError(f"{path}: checksum mismatch, the tensor data is corrupted")
    try:
        _check_contents(meta, tensors)
    except FormatError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise FormatError(f"{path}: malformed metadata ({type(e).__name__}: {e})") from e
    return tensors, meta


def _generator_from(meta: dict, tensors: dict[str, torch.Tensor]) -> Generator:
    spec, fitted = _spec_from_meta(meta)
    weights = None
    if fitted:
        weights = [tensors[f"generator.{i}"].float()
                   for i in range(len(seeded_weights_shapes(spec)))]
    return Generator(spec, weights)


def _config_from(meta: dict) -> MCNCConfig:
    spec, _ = _spec_from_meta(meta)
    return MCNCConfig(**spec.to_dict(), mode=meta["mode"], m=meta["m"], rank=meta["rank"],
                      train_dense=meta["train_dense"])


def _check_dense(tensors: dict, meta: dict, state: dict[str, torch.Tensor]) -> None:
    for key in meta["dense"]:
        if key not in state:
            raise FormatError(f"the file stores {key!r}, which the model does not have")
        if tuple(state[key].shape) != tuple(tensors[f"dense.{key}"].shape):
            raise FormatError(f"{key!r}: the model has shape {tuple(state[key].shape)}, the file "
                              f"has {tuple(tensors[f'dense.{key}'].shape)}")


def load(path: str | os.PathLike, model: nn.Module, verify_base: bool = True) -> MCNCModel:
    """Load a .mcnc file into ``model`` and return the compressed model.

    Args:
        model: either a skeleton of the original architecture (any weights; in ``delta`` mode
            the pretrained base weights), which is compressed in place, or an
            :class:`MCNCModel` with the same layout, whose values are replaced.
        verify_base: in ``delta`` mode, check that the skeleton's weights are the base the
            file was trained on.

    Raises:
        FormatError: the file is invalid or does not match ``model``; ``model`` is unchanged.
    """
    tensors, meta = read(path)
    layout = Layout.from_dict(meta["layout"])
    config = _config_from(meta)
    if isinstance(model, MCNCModel):
        ours = (model.layout, model.generator.spec, model.config.mode, model.config.m)
        theirs = (layout, _spec_from_meta(meta)[0], config.mode, config.m)
        if ours != theirs:
            raise FormatError(f"{path} was written for a different layout or generator than "
                              "this MCNCModel; pass an uncompressed skeleton instead")
        _check_dense(tensors, meta, model.base.state_dict())
        compressed = model
    else:
        problems = layout_mismatches(layout, model)
        if problems:
            raise FormatError(f"{path} does not fit this {type(model).__name__}: "
                              + "; ".join(problems[:5]))
        targets = layout.target_names()
        _check_dense(tensors, meta, {k: v for k, v in model.state_dict().items()
                                     if k not in targets})
        if meta["mode"] == "delta" and verify_base:
            params = dict(model.named_parameters())
            theta0 = torch.cat([params[t.name].detach().reshape(-1) for t in layout.targets])
            if base_digest(theta0) != meta["base_sha256"]:
                raise FormatError(f"{path} is a fine-tuning delta for other base weights than "
                                  "the model's; load the matching base (or verify_base=False)")
        compressed = wrap(model, layout, config, _generator_from(meta, tensors))
    with torch.no_grad():
        compressed.alpha.copy_(tensors["mcnc.alpha"])
        compressed.beta.copy_(tensors["mcnc.beta"])
        state = compressed.base.state_dict()
        for key in meta["dense"]:
            state[key].copy_(tensors[f"dense.{key}"])
    return compressed


@torch.no_grad()
def reconstruct(path: str | os.PathLike, base_state_dict: dict[str, torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
    """The dense state dict of the original architecture, without building the model.

    ``load_state_dict(strict=True)`` on the uncompressed model accepts it, and the model then
    gives the same outputs as the compressed one. ``delta`` files also need the base weights.
    """
    tensors, meta = read(path)
    layout = Layout.from_dict(meta["layout"])
    generator = _generator_from(meta, tensors)
    flat = generate_flat(generator, tensors["mcnc.alpha"].float(), tensors["mcnc.beta"].float())
    if meta["mode"] == "delta":
        if base_state_dict is None:
            raise ValueError(f"{path} stores a fine-tuning delta: pass the base model's "
                             "state_dict as base_state_dict")
        theta0 = torch.cat([base_state_dict[t.name].reshape(-1).float() for t in layout.targets])
        if base_digest(theta0) != meta["base_sha256"]:
            raise FormatError(f"{path} was trained on other base weights than the ones given")
        flat = flat[: layout.total] + theta0
    weights = materialize(layout, flat)
    by_name = {n: weights[t.name] for t in layout.targets for n in t.names}
    dense = {k: tensors[f"dense.{k}"] for k in meta["dense"]}
    state = {}
    for key in layout.state_keys:
        if key in by_name:
            state[key] = by_name[key].clone()
        elif key in dense:
            state[key] = dense[key]
        elif base_state_dict is not None and key in base_state_dict:
            state[key] = base_state_dict[key]
        else:
            raise FormatError(f"{path} has no value for {key!r}")
    return state
