"""Adapter files, in peft's layout: a folder with ``adapter_config.json`` and
``adapter_model.safetensors``.

``adapter_config.json``: the config's fields and ``method``, plus ``format``
(``"mcnc-adapter"``), ``format_version``, ``targets`` (every adapted layer's name and
``(out, in)`` features, in factor order), ``base_model_name_or_path`` (informative, as in
peft) and ``payload_sha256`` (the digest of the tensors, so a config and tensors that do not belong
together are detected).

``adapter_model.safetensors``: only what was trained. MCNC: ``mcnc.alpha`` (n, m, k) and
``mcnc.beta`` (n, m); NOLA: ``nola.coefficients``; LoRA: ``lora.A`` and ``lora.B``, every
layer's factor laid end to end. Frozen parts (generator, bases) are regenerated from the seed.

Both files are written atomically; a load checks everything before it changes the model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import safetensors.torch
import torch

from mcnc.adapters.config import AdapterConfig, config_from_dict
from mcnc.adapters.sources import FactorLayout, FactorSource, TargetShape
from mcnc.errors import FormatError
from mcnc.fileformat import atomic_write, tensor_digest

FORMAT = "mcnc-adapter"
FORMAT_VERSION = 1
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
MAX_CONFIG_BYTES = 16 << 20
MAX_FACTOR_NUMBERS = 1 << 31
"""Refuse layouts whose factors would exceed 8 GB of float32 (a corrupt or hostile file)."""


def write_adapter(directory: str | os.PathLike, source: FactorSource, base_model: str | None,
                  dtype: torch.dtype = torch.float32) -> Path:
    """Write one adapter to ``directory`` (created if needed); returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        tensors = {k: v.detach().to("cpu", dtype).contiguous()
                   for k, v in source.stored_tensors().items()}
    config = {
        **source.config.to_dict(),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "targets": [t.to_dict() for t in source.layout.targets],
        "base_model_name_or_path": base_model,
        "payload_sha256": tensor_digest(tensors),
    }
    atomic_write(directory / WEIGHTS_NAME, safetensors.torch.save(tensors, {"format": FORMAT}))
    atomic_write(directory / CONFIG_NAME, json.dumps(config, indent=2).encode())
    return directory


def _read_bytes(path: Path, limit: int | None = None) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; an adapter folder holds {CONFIG_NAME} "
                                f"and {WEIGHTS_NAME} (written by save_pretrained)")
    if limit is not None and path.stat().st_size > limit:
        raise FormatError(f"{path} is {path.stat().st_size:,} bytes, more than the {limit:,} "
                          "an adapter config can be")
    return path.read_bytes()


def _targets(data: object) -> tuple[TargetShape, ...]:
    def ok(t: object) -> bool:
        return (isinstance(t, dict) and set(t) == {"name", "out_features", "in_features"}
                and isinstance(t["name"], str)
                and all(isinstance(t[f], int) and not isinstance(t[f], bool)
                        and 0 < t[f] < 1 << 31 for f in ("out_features", "in_features")))

    if not isinstance(data, list) or not data or not all(ok(t) for t in data):
        raise FormatError("'targets' must be a non-empty list of {name, out_features, "
                          "in_features} with positive integer features")
    return tuple(TargetShape(**t) for t in data)


def read_adapter(directory: str | os.PathLike
                 ) -> tuple[AdapterConfig, FactorLayout, dict[str, torch.Tensor], dict]:
    """Read and check one adapter folder (nothing about the model yet).

    Returns:
        config, factor layout, tensors (float32), and the raw config JSON.

    Raises:
        FileNotFoundError: a file is missing. FormatError: anything else is wrong.
    """
    directory = Path(directory)
    raw = _read_bytes(directory / CONFIG_NAME, MAX_CONFIG_BYTES)
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{directory / CONFIG_NAME} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FormatError(f"{directory / CONFIG_NAME} is not an mcnc adapter config "
                          f"(format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise FormatError(f"adapter format version {meta.get('format_version')!r} is not "
                          f"supported (this mcnc reads version {FORMAT_VERSION}); upgrade mcnc")
    fields = {k: v for k, v in meta.items() if k not in
              ("format", "format_version", "targets", "base_model_name_or_path",
               "payload_sha256")}
    try:
        config = config_from_dict(fields)
    except ValueError as e:
        raise FormatError(f"{directory / CONFIG_NAME}: {e}") from None
    layout = FactorLayout(_targets(meta.get("targets")), config.rank)
    if layout.total_a + layout.total_b > MAX_FACTOR_NUMBERS:
        raise FormatError(f"the adapter's factors would have "
                          f"{layout.total_a + layout.total_b:,} numbers; refusing")
    data = _read_bytes(directory / WEIGHTS_NAME)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own error types for any malformed input
        raise FormatError(f"{directory / WEIGHTS_NAME} is not a valid safetensors file "
                          f"({e})") from None
    if tensor_digest(tensors) != meta.get("payload_sha256"):
        raise FormatError(f"{directory / WEIGHTS_NAME} does not match {CONFIG_NAME} (payload "
                          "digest differs): the files are corrupt or from different adapters")
    for name, t in tensors.items():
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise FormatError(f"tensor {name!r} must hold finite floating-point numbers")
    return config, layout, {k: v.float() for k, v in tensors.items()}, meta


def check_tensors(source: FactorSource, tensors: dict[str, torch.Tensor]) -> None:
    """The file's tensors must be exactly the ones ``source`` trains, with the same shapes."""
    expected = source.expected_shapes()
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        raise FormatError(f"the adapter file holds tensors {found}, its config implies "
                          f"{expected}")
