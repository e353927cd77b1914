"""The ``.mcnc`` file: one safetensors file, no pickle, for every compression method.

Tensors:
    ``<method>.<name>`` the method's trainable tensors (MCNC: ``mcnc.alpha`` (n, m, k) and
    ``mcnc.beta`` (n, m); PRANC: ``pranc.coefficients``; ...), float32, float16 or bfloat16;
    integer tensors a method needs (pruning: the kept positions);
    ``dense.<state key>`` for every state entry stored as it is (buffers, trained dense params);
    ``generator.<i>`` only for a fitted MCNC generator (a seeded one is rebuilt from its seed).

Metadata: the safetensors ``__metadata__`` entry ``"mcnc"`` holds a JSON object with the format
version, the method and its settings (for MCNC the generator spec and mode), the layout, a
SHA-256 of the tensor payload and a SHA-256 of the metadata's canonical JSON, so a flipped bit
anywhere in the file is detected. Files written before ``method`` existed are MCNC files.
Files are written atomically (temporary file, fsync, rename), and a load checks everything
before it changes anything.

Files may come from anyone, so a reader trusts nothing in them: every metadata value has its
type and range checked (JSON booleans are not integers), every floating-point tensor must be
finite, and a file may describe at most ``MAX_NUMBERS`` weights and ask for at most
``MAX_WORK`` operations to regenerate them (:mod:`mcnc.core.limits`); anything else is a
:class:`FormatError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import safetensors.torch
import torch
from torch import nn

from mcnc.core.errors import FormatError
from mcnc.core.layout import Layout, layout_mismatches
from mcnc.core.limits import MAX_NUMBERS, VALUE_ERRORS, check_finite, is_int
from mcnc.core.reparam import METHODS, Reparameterized, flat_values, values_follow

FORMAT_NAME = "mcnc"
FORMAT_VERSION = 2
"""The newest version this mcnc reads and writes; a file gets the oldest version that can
describe it (version 2: MCNC with chunks per layer), so other files stay readable by readers
of version 1."""
MAX_HEADER_BYTES = 64 << 20
STORAGE_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
T = TypeVar("T")
__all__ = ["FormatError", "load", "read", "reconstruct", "save", "to_bytes"]


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


def to_bytes(model: Reparameterized, dtype: torch.dtype = torch.float32) -> bytes:
    """The .mcnc file content for ``model`` (see :func:`save`)."""
    model = getattr(model, "_orig_mod", model)  # the model inside a torch.compile wrapper
    if not isinstance(model, Reparameterized):
        raise TypeError(f"expected a compressed model (from mcnc.compress or a baseline), got "
                        f"{type(model)}")
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {list(STORAGE_DTYPES)}, got {dtype}")
    prefix = f"{model.method}."
    with torch.no_grad():
        tensors = {k: v.to(dtype) if k.startswith(prefix) and v.is_floating_point() else v
                   for k, v in model.stored_tensors().items()}
    tensors |= {f"dense.{k}": v for k, v in model.dense_leftovers().items()}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {
        "format": FORMAT_NAME,
        "format_version": model.format_version(),
        "method": model.method,
        **model.file_metadata(),
        "train_dense": model.config.trains_dense,
        "layout": model.layout.to_dict(),
        "dense": sorted(k.removeprefix("dense.") for k in tensors if k.startswith("dense.")),
        "base_sha256": base_digest(model.theta0) if model.config.mode == "delta" else None,
        "payload_sha256": tensor_digest(tensors),
    }
    meta["metadata_sha256"] = metadata_digest(meta)
    return safetensors.torch.save(tensors, metadata={"mcnc": json.dumps(meta)})


def save(model: Reparameterized, path: str | os.PathLike, dtype: torch.dtype = torch.float32
         ) -> Path:
    """Write ``model`` to ``path`` atomically.

    Args:
        model: a model returned by :func:`mcnc.compress`, a baseline or :func:`mcnc.load`, or
            a ``torch.compile`` wrapper of one (its ``_orig_mod`` is saved).
        dtype: storage type of the method's trained numbers (MCNC: alpha and beta): float32
            (exact), float16 or bfloat16.
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
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise FormatError(f"no readable mcnc metadata in the header ({e}); is this a .mcnc "
                          "file written by mcnc.save?") from e
    if not isinstance(meta, dict):
        raise FormatError("the mcnc metadata is not a JSON object")
    return meta


def _check_version(meta: dict) -> None:
    if meta.get("format") != FORMAT_NAME:
        raise FormatError(f"metadata says format {meta.get('format')!r}, expected 'mcnc'")
    version = meta.get("format_version")
    if not is_int(version, 1, FORMAT_VERSION):
        hint = ("upgrade mcnc to read it" if is_int(version, FORMAT_VERSION + 1)
                else "the file is damaged or not from mcnc")
        raise FormatError(f"format version {version!r} is not supported (this mcnc reads "
                          f"versions 1 to {FORMAT_VERSION}); {hint}")


def method_class(meta: dict) -> type[Reparameterized]:
    """The class of the method that wrote a file (files without ``method`` are MCNC)."""
    name = meta.get("method", "mcnc")
    if not isinstance(name, str) or name not in METHODS:
        raise FormatError(f"unknown compression method {name!r} (this mcnc knows "
                          f"{sorted(METHODS)}); upgrade mcnc to read this file")
    return METHODS[name]


def _expect_shape(tensors: dict, name: str, shape: tuple[int, ...], floating: bool = True
                  ) -> None:
    """Tensors whose name ends in ``_index`` hold integers; all others finite floats of a
    storage dtype."""
    if name not in tensors:
        raise FormatError(f"tensor {name!r} is missing")
    t = tensors[name]
    if tuple(t.shape) != shape:
        raise FormatError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
    if not floating:
        if t.dtype not in (torch.int32, torch.int64):
            raise FormatError(f"tensor {name!r} must hold int32 or int64 values, not {t.dtype}")
    elif t.dtype not in STORAGE_DTYPES:
        raise FormatError(f"tensor {name!r} is {t.dtype}; method tensors are float32, float16 "
                          "or bfloat16")
    else:
        check_finite(name, t)


def _string_list(value: object, what: str) -> list[str]:
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise FormatError(f"{what} must be a list of strings")
    if len(set(value)) != len(value):
        raise FormatError(f"{what} lists a name twice")
    return value


_TARGET_KEYS = {"name", "shape", "offset", "rank", "aliases"}


def _check_target(i: int, t: object) -> None:
    if not (isinstance(t, dict) and set(t) == _TARGET_KEYS):
        raise FormatError(f"layout target {i} must be an object with keys {sorted(_TARGET_KEYS)}")
    shape = t["shape"]
    if not (isinstance(shape, list) and all(is_int(s, 1, MAX_NUMBERS) for s in shape)):
        raise FormatError(f"layout target {i}: shape must be a list of positive integers, got "
                          f"{shape!r}")
    if not (isinstance(t["name"], str) and is_int(t["offset"], 0, MAX_NUMBERS)
            and (t["rank"] is None or is_int(t["rank"], 1, MAX_NUMBERS))):
        raise FormatError(f"layout target {i}: name must be a string, offset a non-negative "
                          "integer and rank null or a positive integer")
    _string_list(t["aliases"], f"layout target {i}: aliases")


def _checked_layout(meta: dict) -> Layout:
    """The file's layout, after checking every value a reader relies on (section 9 of
    docs/format.md): types, offsets end to end, unique names that are all state keys, sizes
    within ``MAX_NUMBERS``; also the ``dense`` list and ``base_sha256``."""
    data = meta["layout"]
    if not (isinstance(data, dict) and set(data) == {"targets", "state_keys"}):
        raise FormatError("layout must be an object with keys 'targets' and 'state_keys'")
    state_keys = set(_string_list(data["state_keys"], "layout.state_keys"))
    if not (isinstance(data["targets"], list) and data["targets"]):
        raise FormatError("layout.targets must be a non-empty list")
    for i, t in enumerate(data["targets"]):
        _check_target(i, t)
    layout = Layout.from_dict(data)
    offset = numbers = 0
    for t in layout.targets:
        if t.offset != offset:
            raise FormatError(f"layout entry {t.name!r} is inconsistent (offset {t.offset}, "
                              f"expected {offset})")
        offset += t.size
        numbers += max(t.numel, t.size)
        if numbers > MAX_NUMBERS:
            raise FormatError(f"the layout describes more than {MAX_NUMBERS:,} weights; "
                              "the file is corrupt or hostile")
    names = [n for t in layout.targets for n in t.names]
    dense = _string_list(meta["dense"], "dense")
    if len(set(names)) != len(names) or set(names) & set(dense):
        raise FormatError("a name appears twice among the layout's targets, aliases and dense "
                          "keys")
    unknown = (set(names) | set(dense)) - state_keys
    if unknown:
        raise FormatError(f"the layout names tensors that are not state keys: {sorted(unknown)}")
    base = meta["base_sha256"]
    if not (base is None or isinstance(base, str)) or (base is None) == (meta["mode"] == "delta"):
        raise FormatError("base_sha256 must be a digest string in delta mode and null otherwise")
    return layout


def _check_contents(meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    cls = method_class(meta)
    if not isinstance(meta["train_dense"], bool):
        raise FormatError("train_dense must be true or false")
    config = cls.config_from_file(meta)
    layout = _checked_layout(meta)
    shapes = cls.expected_tensors(config, layout, meta)
    expected = set(shapes) | {f"dense.{k}" for k in meta["dense"]}
    if set(tensors) != expected:
        raise FormatError(f"unexpected or missing tensors {sorted(set(tensors) ^ expected)[:5]}")
    for name, shape in shapes.items():
        _expect_shape(tensors, name, shape, floating=not name.endswith("_index"))
    for key in meta["dense"]:
        check_finite(f"dense.{key}", tensors[f"dense.{key}"])
    cls.check_tensors(config, layout, tensors)


def read(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read and fully validate a .mcnc file.

    Returns:
        (tensors by name, metadata dict).

    Raises:
        FormatError: truncated, corrupted, wrong version or malformed.
        FileNotFoundError: no such file.
    """
    data = _file_bytes(path)
    meta = _parse_header(data)
    _check_version(meta)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own error types for every malformation
        raise FormatError(f"{path}: the safetensors structure is invalid ({e})") from e
    try:
        digest = metadata_digest(meta)
    except VALUE_ERRORS as e:  # nesting too deep to serialise again
        raise FormatError(f"{path}: unusable metadata ({type(e).__name__}: {e})") from e
    if digest != meta.get("metadata_sha256"):
        raise FormatError(f"{path}: metadata checksum mismatch, the header is corrupted")
    if tensor_digest(tensors) != meta.get("payload_sha256"):
        raise FormatError(f"{path}: checksum mismatch, the tensor data is corrupted")
    try:
        _check_contents(meta, tensors)
    except FormatError as e:
        raise FormatError(f"{path}: {e}") from e
    except VALUE_ERRORS as e:
        raise FormatError(f"{path}: malformed metadata ({type(e).__name__}: {e})") from e
    return tensors, meta


def _file_bytes(path: str | os.PathLike) -> bytes:
    path = Path(path)
    if path.is_dir():
        adapter = " (it holds an adapter: AdapterModel.load_adapter reads it)" if (
            path / "adapter_config.json").exists() else ""
        raise FormatError(f"{path} is a directory{adapter}; pass the path of a .mcnc file")
    return path.read_bytes()


def _check_dense(tensors: dict, meta: dict, state: dict[str, torch.Tensor]) -> None:
    for key in meta["dense"]:
        if key not in state:
            raise FormatError(f"the file stores {key!r}, which the model does not have")
        if tuple(state[key].shape) != tuple(tensors[f"dense.{key}"].shape):
            raise FormatError(f"{key!r}: the model has shape {tuple(state[key].shape)}, the file "
                              f"has {tuple(tensors[f'dense.{key}'].shape)}")


def load(path: str | os.PathLike, model: nn.Module, verify_base: bool = True,
         device: str | torch.device | None = None) -> Reparameterized:
    """Load a .mcnc file (of any method) into ``model`` and return the compressed model.

    Args:
        model: either a skeleton of the original architecture (any weights; in ``delta`` mode
            the pretrained base weights), which is compressed in place, or a compressed model
            of the same method and layout, whose values are replaced.
        verify_base: in ``delta`` mode, check that the skeleton's weights are the base the
            file was trained on.
        device: where the returned model lives (default: where ``model`` is); the file's
            tensors are read on the CPU and the weights regenerated there first, so they are
            the same bits on every device.

    Raises:
        FormatError: the file is invalid or does not match ``model``; ``model`` is unchanged.
    """
    tensors, meta = read(path)
    loaded = _load_checked(path, tensors, meta, model, verify_base)
    return loaded if device is None else loaded.to(device)


def _load_checked(path, tensors: dict[str, torch.Tensor], meta: dict, model: nn.Module,
                  verify_base: bool, ordered: bool = True) -> Reparameterized:
    cls = method_class(meta)
    layout = Layout.from_dict(meta["layout"])
    config = cls.config_from_file(meta)
    if isinstance(model, Reparameterized):
        ours = model.file_metadata()
        if (type(model) is not cls or model.layout != layout
                or ours != {k: meta.get(k) for k in ours}):
            raise FormatError(f"{path} was written for a different method, layout or settings "
                              f"than this {type(model).__name__}; pass an uncompressed skeleton "
                              "instead")
        _check_dense(tensors, meta, model.base.state_dict())
        compressed = model
    else:
        problems = layout_mismatches(layout, model, ordered)
        if problems:
            raise FormatError(f"{path} does not fit this {type(model).__name__}: "
                              + "; ".join(problems[:5]))
        targets = layout.target_names()
        _check_dense(tensors, meta, {k: v for k, v in model.state_dict().items()
                                     if k not in targets})
        if config.mode == "delta" and verify_base:
            theta0 = flat_values(layout, dict(model.named_parameters()))
            if base_digest(theta0) != meta["base_sha256"]:
                raise FormatError(f"{path} is a fine-tuning delta for other base weights than "
                                  "the model's; load the matching base (or verify_base=False)")
        with values_follow():  # fill() generates the weights, from the file's values
            compressed = _built(path, lambda: cls.from_file(model, layout, config, tensors))

    def fill() -> None:
        with torch.no_grad():
            compressed.load_values(tensors)
            state = compressed.base.state_dict()
            for key in meta["dense"]:
                state[key].copy_(tensors[f"dense.{key}"])
        compressed._refresh()

    _built(path, fill)
    return compressed


def _built(path, build: Callable[[], T]) -> T:
    """``build()``, with any error a bad value in the file can cause turned into a
    :class:`FormatError` naming the file (``read`` has checked everything it can, so this
    only guards against what slipped through)."""
    try:
        return build()
    except FormatError:
        raise
    except VALUE_ERRORS as e:
        raise FormatError(f"{path}: the model cannot be built from this file "
                          f"({type(e).__name__}: {e})") from e


def _skeleton(layout: Layout, tensors: dict[str, torch.Tensor], meta: dict,
              base_state_dict: dict[str, torch.Tensor] | None) -> nn.Module:
    """A bare module tree with the file's parameter names: targets as parameters (holding the
    base weights in ``delta`` mode), every other state entry as a buffer."""
    root = nn.Module()
    targets = {t.name: t for t in layout.targets}
    target_names = layout.target_names()
    for key in layout.state_keys:
        module = root
        *path, attr = key.split(".")
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        if key in targets:
            if meta["mode"] == "delta":  # reconstruct has checked base_state_dict
                value = base_state_dict[key].float()
            else:
                value = torch.zeros(targets[key].shape)
            module.register_parameter(attr, nn.Parameter(value))
        elif key not in target_names:
            dense = tensors.get(f"dense.{key}")
            if dense is None and base_state_dict is not None:
                dense = base_state_dict.get(key)
            if dense is None:
                raise FormatError(f"the file has no value for {key!r}; pass base_state_dict")
            module.register_buffer(attr, dense.clone())
    for t in layout.targets:  # tied weights: the other names point at the same parameter
        for alias in t.aliases:
            owner_path, _, attr = alias.rpartition(".")
            owner = root.get_submodule(owner_path) if owner_path else root
            owner.register_parameter(attr, root.get_parameter(t.name))
    return root


@torch.no_grad()
def reconstruct(path: str | os.PathLike, base_state_dict: dict[str, torch.Tensor] | None = None,
                device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """The dense state dict of the original architecture, without building the model.

    ``load_state_dict(strict=True)`` on the uncompressed model accepts it, and the model then
    gives the same outputs as the compressed one. ``delta`` files also need the base weights.
    The weights are regenerated on the CPU (the same bits everywhere) and then moved to
    ``device`` if one is given.
    """
    tensors, meta = read(path)
    layout = Layout.from_dict(meta["layout"])
    if meta["mode"] == "delta":
        if base_state_dict is None:
            raise ValueError("this file stores a fine-tuning delta: pass the base model's "
                             "state_dict as base_state_dict")
        missing = layout.target_names() - set(base_state_dict)
        if missing:
            raise FormatError(f"{path} does not fit base_state_dict, which lacks "
                              f"{sorted(missing)[:5]}; pass the state_dict of the base model "
                              "the delta was trained on")
    skeleton = _built(path, lambda: _skeleton(layout, tensors, meta, base_state_dict))
    compressed = _load_checked(path, tensors, meta, skeleton, verify_base=True, ordered=False)
    state = _built(path, lambda: compressed.dense_state_dict(copies=False))
    return state if device is None else {k: v.to(device) for k, v in state.items()}
