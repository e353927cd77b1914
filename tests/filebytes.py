"""Taking a .mcnc file's bytes apart and putting edited parts back together, and signing an
edited adapter folder (tests only)."""

import json

import safetensors.torch

from mcnc.adapters.files import adapter_digest
from mcnc.core.fileformat import metadata_digest, tensor_digest


def split(data: bytes) -> tuple[dict, dict]:
    """(tensors, metadata) of a valid file."""
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["mcnc"])
    return safetensors.torch.load(data), meta


def join(tensors: dict, meta: dict) -> bytes:
    """A file from (possibly edited) tensors and metadata, with both digests recomputed."""
    meta = dict(meta)
    meta["payload_sha256"] = tensor_digest(tensors)
    meta["metadata_sha256"] = metadata_digest(meta)
    return safetensors.torch.save(tensors, metadata={"mcnc": json.dumps(meta)})


def signed_adapter(config: dict, tensors: dict) -> tuple[bytes, bytes]:
    """(adapter_config.json, adapter_model.safetensors) bytes of a folder holding ``config``
    and ``tensors``, with the digests its format version asks for recomputed (version 4: one
    digest of both in the config; before: one in each file)."""
    config = {k: v for k, v in config.items() if k not in ("payload_sha256", "adapter_sha256")}
    metadata = None
    if config.get("format_version", 4) >= 4:
        config["adapter_sha256"] = adapter_digest(config, tensors)
    else:
        config["payload_sha256"] = tensor_digest(tensors)
        metadata = {"format": "mcnc-adapter", "config_sha256": metadata_digest(config)}
    return json.dumps(config, indent=2).encode(), safetensors.torch.save(tensors, metadata)
