"""Adapter files, in peft's layout: a folder with ``adapter_config.json`` and
``adapter_model.safetensors``.

``adapter_config.json``: the config's fields and ``method``, plus ``format``
(``"mcnc-adapter"``), ``format_version``, ``targets`` (every adapted layer as
``[name, out_features, in_features]``, in factor order, one per line; version 1 wrote each as
an object, which costs twice the bytes on a model with hundreds of target layers and is still
read), ``base_model_name_or_path`` (informative, as in peft) and ``adapter_sha256``
(:func:`adapter_digest`: one digest of the rest of the config and of the tensors, so an edited
config, a changed tensor and tensors from another adapter are all detected); one key per line,
no optional spaces. Versions 1-3 held two digests instead (``payload_sha256`` in the config and,
from late version 2, ``config_sha256`` in the tensor file's metadata), ~200 bytes more with
the indentation; they are still checked. Every config value also has its type and range
checked.

``adapter_model.safetensors``: only what was trained. MCNC: ``mcnc.alpha`` (n, m, k) and
``mcnc.beta`` (n, m); NOLA: ``nola.coefficients``; LoRA: ``lora.A`` and ``lora.B``, every
layer's factor laid end to end. Frozen parts (generator, bases) are regenerated from the seed.

Both files are written atomically; a load checks everything before it changes the model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import safetensors.torch
import torch

from mcnc.adapters.config import (
    AdapterConfig,
    MCNCAdapterConfig,
    NOLAAdapterConfig,
    config_from_dict,
)
from mcnc.adapters.sources import (
    AdaptedLayer,
    FactorLayout,
    FactorSource,
    build_source,
    region_sizes,
)
from mcnc.baselines.subspace import split_coefficients
from mcnc.core.errors import FormatError
from mcnc.core.fileformat import atomic_write, metadata_digest, tensor_digest
from mcnc.core.limits import (
    MAX_ADAPTER_FACTOR_NUMBERS,
    VALUE_ERRORS,
    check_finite,
    check_work,
    is_int,
    is_number,
)
from mcnc.core.manifold import Region, chunk_count, expected_shapes

FORMAT = "mcnc-adapter"
FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
MAX_TARGETS = 1 << 20
"""The most adapted layers a config may describe (a compact ``targets`` expands to this)."""
ABSENT_MCNC_KEYS = {"mixing": "none"}
"""Keys an MCNC config may lack (written before they existed), with what the folder used; a
changed default must not change how such a folder reads."""
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
MAX_CONFIG_BYTES = 16 << 20


def write_adapter(directory: str | os.PathLike, source: FactorSource, base_model: str | None,
                  dtype: torch.dtype = torch.float32) -> Path:
    """Write one adapter to ``directory`` (created if needed); returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        tensors = {k: v.detach().to("cpu", dtype).contiguous()
                   for k, v in source.stored_tensors().items()}
    config = config_record(source, base_model)
    config["adapter_sha256"] = adapter_digest(config, tensors)
    atomic_write(directory / WEIGHTS_NAME, safetensors.torch.save(tensors))
    atomic_write(directory / CONFIG_NAME, _config_json(config))
    return directory


def adapter_digest(config: dict, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of the config's canonical JSON (sorted keys, default separators) without
    ``adapter_sha256``, a newline, and the tensors' digest
    (:func:`~mcnc.core.fileformat.tensor_digest`, of the tensors as stored)."""
    rest = {k: v for k, v in config.items() if k != "adapter_sha256"}
    text = json.dumps(rest, sort_keys=True) + "\n" + tensor_digest(tensors)
    return hashlib.sha256(text.encode()).hexdigest()


def config_record(source: FactorSource, base_model: str | None) -> dict:
    """What ``adapter_config.json`` holds about ``source`` besides its payload's digest."""
    return {**source.config.to_dict(), "format": FORMAT, "format_version": FORMAT_VERSION,
            "targets": pack_targets(source.layout.targets),
            "base_model_name_or_path": base_model}


def pack_targets(targets: tuple[AdaptedLayer, ...]) -> list | dict:
    """The adapted layers as a config writes them: ``{"block": [[template, out, in], ...],
    "indices": [start, stop]}`` when they are one block of layers repeated over consecutive
    indices (``template`` holds ``{}`` where the index goes: the first dotted part of the name
    that is a number, as in ``model.layers.{}.self_attn.q_proj``), which takes a few hundred
    bytes for a language model's hundreds of layers; otherwise every layer as
    ``[name, out, in]``."""
    explicit = [[t.name, t.out_features, t.in_features] for t in targets]
    rows = []
    for t in targets:
        parts = t.name.split(".")
        number = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        if number is None or "{" in t.name or "}" in t.name:
            return explicit
        index = int(parts[number])
        parts[number] = "{}"
        rows.append((index, [".".join(parts), t.out_features, t.in_features]))
    start = rows[0][0]
    block = [row for index, row in rows if index == start]
    stop = start + len(rows) // len(block)
    packed = {"block": block, "indices": [start, stop]}
    return packed if unpack_targets(packed) == explicit else explicit


def unpack_targets(packed: dict) -> list[list]:
    start, stop = packed["indices"]
    return [[template.replace("{}", str(i)), out, n]
            for i in range(start, stop) for template, out, n in packed["block"]]


def _config_json(config: dict) -> bytes:
    """``config`` as JSON, one key per line and one line per target (or per layer of a packed
    block), without optional spaces: a few hundred bytes smaller than indented JSON, which
    matters beside a tensor file of a few kilobytes."""
    def compact(value: object) -> str:
        return json.dumps(value, separators=(",", ":"))

    targets = config["targets"]
    rows = targets if isinstance(targets, list) else targets["block"]
    listed = "[\n" + ",\n".join(map(compact, rows)) + "\n]"
    if isinstance(targets, dict):
        listed = f'{{"block":{listed},"indices":{compact(targets["indices"])}}}'
    lines = [f"{compact(k)}:{listed if k == 'targets' else compact(v)}"
             for k, v in config.items()]
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode()


def _read_bytes(path: Path, limit: int | None = None) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; an adapter folder holds {CONFIG_NAME} "
                                f"and {WEIGHTS_NAME} (written by save_pretrained)")
    if limit is not None and path.stat().st_size > limit:
        raise FormatError(f"{path} is {path.stat().st_size:,} bytes, more than the {limit:,} "
                          "an adapter config can be")
    return path.read_bytes()


def _unpacked(data: dict) -> list[list]:
    """A packed ``targets`` object, checked before it is expanded."""
    block, indices = data.get("block"), data.get("indices")
    if not (set(data) == {"block", "indices"} and isinstance(block, list) and block
            and all(isinstance(r, list) and len(r) == 3 and isinstance(r[0], str)
                    and r[0].count("{}") == 1 for r in block)
            and isinstance(indices, list) and len(indices) == 2
            and all(is_int(i, 0, MAX_TARGETS) for i in indices) and indices[0] < indices[1]
            and (indices[1] - indices[0]) * len(block) <= MAX_TARGETS):
        raise FormatError("a packed 'targets' must be an object with 'block' (a list of "
                          "[template with one {}, out, in]) and 'indices' ([start, stop], "
                          f"0 <= start < stop), at most {MAX_TARGETS:,} layers")
    return unpack_targets(data)


def _targets(data: object, version: int) -> tuple[AdaptedLayer, ...]:
    """The targets of a config: from version 3 a packed block (:func:`pack_targets`) or
    ``[name, out, in]`` lists, as in version 2; version 1 wrote
    ``{name, out_features, in_features}`` objects."""
    if version >= 3 and isinstance(data, dict):
        data = _unpacked(data)
    def fields(t: object) -> list | None:
        if version == 1:
            keys = ("name", "out_features", "in_features")
            return [t[k] for k in keys] if isinstance(t, dict) and set(t) == set(keys) else None
        return t if isinstance(t, list) and len(t) == 3 else None

    rows = [fields(t) for t in data] if isinstance(data, list) else []
    if not rows or not all(r is not None and isinstance(r[0], str)
                           and all(is_int(f, 1, (1 << 31) - 1) for f in r[1:]) for r in rows):
        form = ("{name, out_features, in_features}" if version == 1
                else "[name, out_features, in_features]")
        raise FormatError(f"'targets' must be a non-empty list of {form} with positive "
                          "integer features")
    if len({r[0] for r in rows}) != len(rows):
        raise FormatError("'targets' names a layer twice")
    return tuple(AdaptedLayer(*r) for r in rows)


_INTEGERS = {"rank", "seed", "coefficients", "k", "d", "width", "depth", "m", "format_version"}
_NUMBERS = {"scaling", "dropout", "L", "hidden_gain", "alpha_init_scale", "joint_start",
            "a_start", "b_start"}
_STRINGS = {"method", "format", "activation", "mixing", "payload_sha256", "adapter_sha256"}
_BOOLEANS = {"freeze_a"}


def _check_types(meta: dict) -> None:
    """JSON types of the config's values (ranges are the config classes' business): integers
    are not booleans, numbers are finite, strings are strings, booleans are booleans."""
    for key, value in meta.items():
        if key in _INTEGERS:
            ok = is_int(value, -(1 << 64), 1 << 64)
        elif key in _NUMBERS:
            ok = is_number(value)
        elif key in _STRINGS:
            ok = isinstance(value, str)
        elif key in _BOOLEANS:
            ok = isinstance(value, bool)
        elif key == "target_modules":
            ok = isinstance(value, str) or (isinstance(value, list)
                                            and all(isinstance(v, str) for v in value))
        elif key == "base_model_name_or_path":
            ok = value is None or isinstance(value, str)
        elif key == "budget":
            ok = value is None or is_int(value, 1, 1 << 62)
        else:
            continue  # targets has its own check; unknown keys are refused by the config
        if not ok:
            raise FormatError(f"{key!r} has an invalid value {value!r:.80}")


def _expected_shapes(config: AdapterConfig, layout: FactorLayout) -> dict[str, tuple[int, ...]]:
    """The trained tensors a folder must hold, from its config and targets alone (checked
    before anything is allocated), and a check that regenerating them is within limits."""
    if isinstance(config, MCNCAdapterConfig):
        n = chunk_count([Region(size) for size in region_sizes(layout, config)], config.d)
        work = n * config.m * config.generator_spec().weight_count()
        shapes = {f"mcnc.{name}": shape
                  for name, shape in expected_shapes(n, config.m, config.k).items()}
    elif isinstance(config, NOLAAdapterConfig):
        sizes = ([layout.a_size(t) for t in layout.targets]
                 + [layout.b_size(t) for t in layout.targets])
        counts = split_coefficients(sizes, config.coefficients)  # ValueError if too few
        work = sum(size * n for size, n in zip(sizes, counts, strict=True))
        shapes = {"nola.coefficients": (config.coefficients,)}
    else:
        work = 0
        shapes = {"lora.A": (layout.total_a,), "lora.B": (layout.total_b,)}
    check_work(work, "multiply-adds or random numbers")
    return shapes


def _config_digest(data: bytes) -> str | None:
    """``config_sha256`` (versions 2-3) from the metadata of a safetensors file safetensors has
    accepted."""
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    digest = header.get("__metadata__", {}).get("config_sha256")
    return digest if isinstance(digest, str) else None


def parse_config(raw: bytes, where: str | os.PathLike
                 ) -> tuple[AdapterConfig, FactorLayout, dict[str, tuple[int, ...]], dict]:
    """Parse and check an adapter config's JSON (read from ``where``, named in errors).

    Returns:
        config, factor layout, the shapes of the tensors it implies, and the raw JSON dict.
    """
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, or nested too deeply
        raise FormatError(f"{where} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FormatError(f"{where} is not an mcnc adapter config "
                          f"(format {meta.get('format') if isinstance(meta, dict) else None!r})")
    version = meta.get("format_version")
    if not is_int(version, 1, FORMAT_VERSION):
        raise FormatError(f"adapter format version {version!r} is not supported (this mcnc "
                          f"reads versions {' and '.join(map(str, READABLE_VERSIONS))}); "
                          "upgrade mcnc")
    fields = {k: v for k, v in meta.items() if k not in
              ("format", "format_version", "targets", "base_model_name_or_path",
               "payload_sha256", "adapter_sha256")}
    if fields.get("method") == "mcnc":  # what a missing key meant when it was written
        fields = {**ABSENT_MCNC_KEYS, **fields}
    try:
        _check_types(meta)
        config = config_from_dict(fields)
        layout = FactorLayout(_targets(meta.get("targets"), version), config.rank)
        if layout.total_a + layout.total_b > MAX_ADAPTER_FACTOR_NUMBERS:
            raise FormatError(f"the adapter's factors would have "
                              f"{layout.total_a + layout.total_b:,} numbers; refusing")
        shapes = _expected_shapes(config, layout)
    except VALUE_ERRORS as e:  # FormatError included: every error names the file
        raise FormatError(f"{where}: {e}") from None
    return config, layout, shapes, meta


TRAINER_WEIGHTS = "model.safetensors"
"""What a plain ``transformers.Trainer`` writes: ``AdapterModel.state_dict()``, which holds
every adapter's tensors (``adapters.<name>.<tensor>``) and its config as UTF-8 JSON bytes
(``adapters.<name>.adapter_config``, a uint8 tensor)."""
CONFIG_ENTRY = "adapter_config"


def config_bytes(source: FactorSource) -> torch.Tensor:
    """``source``'s config record as a uint8 tensor of JSON (a state dict's config entry)."""
    data = json.dumps(config_record(source, None), sort_keys=True).encode()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def read_trainer_checkpoint(directory: str | os.PathLike, adapter_name: str
                            ) -> tuple[AdapterConfig, FactorLayout, dict[str, torch.Tensor]]:
    """Read adapter ``adapter_name`` from the ``model.safetensors`` a plain Trainer wrote in
    ``directory`` (its checkpoints and ``save_model``): config, layout and float32 tensors,
    checked as :func:`read_adapter` checks a folder (there are no digests to compare)."""
    path = Path(directory) / TRAINER_WEIGHTS
    try:
        stored = safetensors.torch.load(_read_bytes(path))
    except FormatError:
        raise
    except Exception as e:  # safetensors raises its own error types for any malformed input
        raise FormatError(f"{path} is not a valid safetensors file ({e})") from None
    prefix = f"adapters.{adapter_name}."
    entry = stored.pop(prefix + CONFIG_ENTRY, None)
    if entry is None:
        names = sorted({k.split(".")[1] for k in stored if k.startswith("adapters.")})
        raise FormatError(f"{path} holds no config of an adapter named {adapter_name!r} "
                          f"(adapters with one: {names}); it was not written from an "
                          "mcnc AdapterModel of version 0.3 or later")
    config, layout, shapes, _ = parse_config(entry.numpy().tobytes(), f"{path} [{prefix}]")
    # the state dict names a tensor by its module path (``manifold.alpha``), a file by the
    # method's name and the tensor's (``mcnc.alpha``)
    tensors = {f"{config.method}.{k.rsplit('.', 1)[-1]}": v for k, v in stored.items()
               if k.startswith(prefix)}
    return config, layout, _checked_tensors(path, tensors, shapes)


def _checked_tensors(path: Path, tensors: dict[str, torch.Tensor],
                     shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The tensors as float32 once their names, shapes and values fit the config."""
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if found != shapes:
        raise FormatError(f"{path} holds tensors {found}, its config implies {shapes}")
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise FormatError(f"tensor {name!r} must hold floating-point numbers, not {t.dtype}")
        check_finite(name, t)
    return {k: v.float() for k, v in tensors.items()}


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
    config, layout, shapes, meta = parse_config(raw, directory / CONFIG_NAME)
    data = _read_bytes(directory / WEIGHTS_NAME)
    try:
        tensors = safetensors.torch.load(data)
        config_digest = _config_digest(data)
    except Exception as e:  # safetensors raises its own error types for any malformed input
        raise FormatError(f"{directory / WEIGHTS_NAME} is not a valid safetensors file "
                          f"({e})") from None
    if meta["format_version"] >= 4:
        if meta.get("adapter_sha256") != adapter_digest(meta, tensors):
            raise FormatError(f"{directory / CONFIG_NAME} and {WEIGHTS_NAME} do not belong "
                              "together (adapter digest differs): one was edited or corrupted, "
                              "or they come from different adapters")
        return config, layout, _checked_tensors(directory / WEIGHTS_NAME, tensors, shapes), meta
    if tensor_digest(tensors) != meta.get("payload_sha256"):
        raise FormatError(f"{directory / WEIGHTS_NAME} does not match {CONFIG_NAME} (payload "
                          "digest differs): the files are corrupt or from different adapters")
    if config_digest is not None and config_digest != metadata_digest(meta):
        raise FormatError(f"{directory / CONFIG_NAME} has changed since the adapter was saved "
                          "(config digest differs): the file is corrupt or was edited")
    return config, layout, _checked_tensors(directory / WEIGHTS_NAME, tensors, shapes), meta


def check_tensors(source: FactorSource, tensors: dict[str, torch.Tensor]) -> None:
    """The file's tensors must be exactly the ones ``source`` trains, with the same shapes."""
    expected = source.expected_shapes()
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        raise FormatError(f"the adapter file holds tensors {found}, its config implies "
                          f"{expected}")


@torch.no_grad()
def source_from_tensors(config: AdapterConfig, layout: FactorLayout,
                        tensors: dict[str, torch.Tensor], **options) -> FactorSource:
    """The adapter a folder describes (``config``, ``layout`` and ``tensors`` as
    :func:`read_adapter` returns them), its trained tensors checked and filled in; options as
    :func:`~mcnc.adapters.sources.build_source`'s."""
    source = build_source(config, layout, **options)
    check_tensors(source, tensors)
    for name, p in source.stored_tensors().items():
        p.copy_(tensors[name])
    return source
