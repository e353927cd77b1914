"""Taking a .mcnc file's bytes apart and putting edited parts back together (tests only)."""

import json

import safetensors.torch

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
