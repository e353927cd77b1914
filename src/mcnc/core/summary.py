"""Parameter and byte accounting of a compressed model, per layer and in total."""

from __future__ import annotations

from dataclasses import dataclass

import safetensors.torch
import torch

from mcnc.core.fileformat import to_bytes
from mcnc.core.reparam import Reparameterized


@dataclass
class LayerRow:
    """One module of the original model."""

    name: str
    original: int
    """Parameters the module has uncompressed."""
    trainable: float
    """Parameters trained for it: its share of the method's numbers (MCNC's alphas and betas,
    PRANC's coefficients, ...; spread over the compressed weights in proportion to their size,
    hence fractional) plus its dense parameters that train."""

    @property
    def ratio(self) -> float:
        return self.original / self.trainable if self.trainable else float("inf")

    @property
    def original_bytes(self) -> int:
        return 4 * self.original

    @property
    def stored_bytes(self) -> float:
        """Bytes it takes in a float32 .mcnc file (headers and buffers aside)."""
        return 4 * self.trainable


@dataclass
class Summary:
    rows: list[LayerRow]
    original_params: int
    trainable_params: int
    stored_values: int
    """Numbers in the file: the method's numbers (and indices), dense leftovers, buffers."""
    dense_bytes: int
    """Size of the uncompressed state dict as a safetensors file."""
    file_bytes: int
    """Size of the .mcnc file (the method's numbers in float32)."""

    @property
    def param_ratio(self) -> float:
        return self.original_params / self.trainable_params

    @property
    def byte_ratio(self) -> float:
        return self.dense_bytes / self.file_bytes

    def table(self) -> str:
        """A printable table: one line per module, then the totals."""
        w = max(len("total"), *(len(r.name) for r in self.rows))
        lines = [f"{'module':<{w}}  {'original':>11}  {'trainable':>11}  {'ratio':>8}  "
                 f"{'dense bytes':>12}  {'mcnc bytes':>12}"]
        lines += [f"{r.name:<{w}}  {r.original:>11,}  {r.trainable:>11,.1f}  {r.ratio:>7.1f}x  "
                  f"{r.original_bytes:>12,}  {r.stored_bytes:>12,.0f}" for r in self.rows]
        lines.append(f"{'total':<{w}}  {self.original_params:>11,}  "
                     f"{self.trainable_params:>11,}  {self.param_ratio:>7.1f}x  "
                     f"{self.dense_bytes:>12,}  {self.file_bytes:>12,}")
        lines.append(f"total bytes are whole files (headers and buffers included): "
                     f"{self.byte_ratio:.1f}x smaller on disk; the .mcnc file stores "
                     f"{self.stored_values:,} numbers")
        return "\n".join(lines)


def _module_of(name: str) -> str:
    """``"features.0.weight"`` -> ``"features.0"``; top-level parameters -> ``"(root)"``."""
    return name.rpartition(".")[0] or "(root)"


def summarize(model: Reparameterized) -> Summary:
    """Count original vs trainable parameters per module and the bytes on disk (any method)."""
    own = sum(t.numel() for t in model.method_tensors().values())
    per_generated = own / model.layout.total
    by_module: dict[str, list[float]] = {}

    def add(name: str, original: int, trainable: float) -> None:
        row = by_module.setdefault(_module_of(name), [0, 0.0])
        row[0] += original
        row[1] += trainable

    for t in model.layout.targets:
        add(t.name, t.numel, t.size * per_generated)
    for name, p in model.base.named_parameters():
        add(name, p.numel(), p.numel() if p.requires_grad else 0)
    order = {}
    for key in model.layout.state_keys:
        order.setdefault(_module_of(key), len(order))
    rows = [LayerRow(name, int(o), tr) for name, (o, tr) in
            sorted(by_module.items(), key=lambda item: order.get(item[0], len(order)))]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stored = (sum(t.numel() for t in model.stored_tensors().values())
              + sum(v.numel() for v in model.dense_leftovers().values()))
    dense = {k: v.contiguous() for k, v in model.dense_state_dict().items()}
    return Summary(rows=rows, original_params=sum(r.original for r in rows),
                   trainable_params=trainable, stored_values=stored,
                   dense_bytes=len(safetensors.torch.save(dense)),
                   file_bytes=len(to_bytes(model, torch.float32)))
