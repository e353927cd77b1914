"""A frozen 4-bit base for QLoRA-style fine-tuning on the CPU.

Weights are stored in the Q4_1 format of GGUF files: every row of an ``(out, in)`` weight is cut
into blocks of ``B`` consecutive input weights (``B = 32`` in GGUF), and each block ``b`` keeps a
float16 step ``d_b``, a float16 minimum ``m_b`` and one 4-bit code ``q_i`` in ``0..15`` per
weight, so that

    w_i = d_b * q_i + m_b                      (computed in float32)

Two codes share a byte, as in GGUF: byte ``j`` of a block holds code ``j`` in its low nibble and
code ``j + B/2`` in its high nibble. A block of 32 weights takes 16 + 2 + 2 = 20 bytes, i.e.
5 bits per weight instead of 32.

:class:`Linear4bit` keeps only these packed buffers. Its forward dequantises the weight, runs
``F.linear`` and drops the weight again; the backward dequantises once more to compute the input
gradient ``dL/dx = dL/dy @ W``, so no float copy of the weight outlives a call (the weight never
gets a gradient). :func:`load_gguf_4bit` builds SmolLM2 / LLaMA with the GGUF file's own Q4_1
blocks, bit for bit; :func:`quantize_linears` quantises any float model in place.

Optionally, ``quantize_linears(..., backend="bitsandbytes")`` uses the NF4/FP4 layers of the
``bitsandbytes`` package instead (4 bits per weight plus one scale per 64 weights), which also
run forward and backward on the CPU.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Q4_1_BLOCK",
    "Q4_1_BLOCK_BYTES",
    "Linear4bit",
    "dequantize_q4",
    "gguf_linear_name",
    "linear_weight_bytes",
    "load_gguf_4bit",
    "quantize_linears",
    "quantize_q4",
    "reverse_permute_rows",
    "split_q4_1_blocks",
]

Q4_1_BLOCK = 32
"""Weights per Q4_1 block in GGUF files."""

Q4_1_BLOCK_BYTES = 20
"""Bytes per Q4_1 block in GGUF files: float16 step, float16 minimum, 16 bytes of codes."""

GGUF_Q4_1_TYPE = 3
"""``GGMLQuantizationType.Q4_1``: the tensor type number of Q4_1 tensors in GGUF files."""

_GGUF_TO_HF = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_LINEAR = re.compile(r"blk\.(\d+)\.(" + "|".join(_GGUF_TO_HF) + r")\.weight")


# ----------------------------------------------------------------------------- the format


def quantize_q4(weight: torch.Tensor, block_size: int = Q4_1_BLOCK
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantise a float ``(out, in)`` weight to Q4_1-style blocks.

    The input dimension is padded to ``nb = ceil(in / B)`` blocks of ``B = block_size`` by
    repeating each row's last weight (which widens no block's range). Per block, with
    ``lo = min w`` and ``hi = max w``:

        m = lo rounded down to float16,   d = (hi - m) / 15 rounded up to float16,
        q = clamp(round((w - m) / d), 0, 15)

    Rounding ``m`` down and ``d`` up keeps ``[m, m + 15 d]`` covering the block, so every
    weight is reproduced to within half a step: ``|w - (d q + m)| <= d / 2`` (up to float32
    rounding). A constant block gets ``d = 0`` and is exact when its value is a float16.

    Returns ``(codes, scales, mins)``: codes ``(out, nb, B/2)`` uint8 packed as in GGUF (low
    nibble of byte ``j`` = code ``j``, high nibble = code ``j + B/2``), scales and mins
    ``(out, nb)`` float16.
    """
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D (out, in) weight, got shape {tuple(weight.shape)}")
    if block_size < 2 or block_size % 2:
        raise ValueError(f"block_size must be an even number >= 2, got {block_size}")
    w = weight.detach().float()
    n_out, n_in = w.shape
    n_blocks = -(-n_in // block_size)
    pad = n_blocks * block_size - n_in
    if pad:
        w = torch.cat((w, w[:, -1:].expand(n_out, pad)), dim=1)
    w = w.reshape(n_out, n_blocks, block_size)
    lo = w.amin(dim=-1)
    hi = w.amax(dim=-1)
    mins = _round_half(lo, down=True)
    scales = _round_half((hi - mins.float()) / 15, down=False)
    d = scales.float().unsqueeze(-1)
    steps = (w - mins.float().unsqueeze(-1)) / torch.where(d > 0, d, torch.ones_like(d))
    q = torch.round(steps).clamp_(0, 15).to(torch.uint8)  # d = 0 only if all w = m: q = 0
    half = block_size // 2
    codes = q[..., :half] | (q[..., half:] << 4)
    return codes.contiguous(), scales, mins


def _round_half(x: torch.Tensor, down: bool) -> torch.Tensor:
    """``x`` (float32) as float16 rounded toward ``-inf`` (``down``) or ``+inf``, elementwise;
    values beyond the float16 range saturate at ``±65504``."""
    h = x.clamp(-65504.0, 65504.0).half()
    wrong = h.float() > x if down else h.float() < x
    if bool(wrong.any()):
        target = torch.full_like(h, float("-inf") if down else float("inf"))
        h = torch.where(wrong, torch.nextafter(h, target), h)
    return h


def dequantize_q4(codes: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor,
                  in_features: int | None = None, dtype: torch.dtype = torch.float32
                  ) -> torch.Tensor:
    """The float weight of Q4_1-style blocks: ``w = d * q + m`` per block.

    ``codes`` ``(out, nb, B/2)`` uint8, ``scales`` and ``mins`` ``(out, nb)`` float16. The
    arithmetic is float32 (``float32(d) * float32(q) + float32(m)``, two roundings, exactly as
    ``gguf.quants.dequantize``), then cast to ``dtype``. Returns ``(out, in_features)``
    (default ``nb * B``): the padding of the last block is cut off.
    """
    n_out, n_blocks, half = codes.shape
    q = torch.cat((codes & 0x0F, codes >> 4), dim=-1).float()  # (out, nb, B)
    q.mul_(scales.float().unsqueeze(-1)).add_(mins.float().unsqueeze(-1))
    w = q.view(n_out, n_blocks * 2 * half)
    if in_features is not None and in_features != w.shape[1]:
        w = w[:, :in_features]
    return w if dtype == torch.float32 else w.to(dtype)


def split_q4_1_blocks(data: np.ndarray | torch.Tensor, out_features: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split raw GGUF Q4_1 bytes into ``(codes, scales, mins)``.

    ``data``: uint8 with ``out_features * nb * 20`` bytes (GGUFReader gives ``(out, nb * 20)``),
    each block laid out as ``d`` (float16, little endian), ``m`` (float16), 16 code bytes.
    Returns codes ``(out, nb, 16)`` uint8, scales and mins ``(out, nb)`` float16 (copies).
    """
    if isinstance(data, np.ndarray):
        raw = torch.from_numpy(np.array(data, copy=True))  # arrays of files are read-only
    else:
        raw = data
    if raw.dtype != torch.uint8:
        raise TypeError(f"Q4_1 data must be uint8 bytes, got {raw.dtype}")
    if raw.numel() % (out_features * Q4_1_BLOCK_BYTES):
        raise ValueError(f"{raw.numel()} bytes is not {out_features} rows of whole Q4_1 blocks")
    blocks = raw.reshape(out_features, -1, Q4_1_BLOCK_BYTES)
    scales = blocks[..., 0:2].contiguous().view(torch.float16).squeeze(-1)
    mins = blocks[..., 2:4].contiguous().view(torch.float16).squeeze(-1)
    codes = blocks[..., 4:].contiguous()
    return codes, scales, mins


class _Dequantized4bitLinear(torch.autograd.Function):
    """``y = x W^T + b`` with ``W`` dequantised in the forward and again in the backward, so
    that only the packed weight is kept for the backward pass.

    The matrix products run in ``compute_dtype`` (``x``'s dtype when ``None``): ``x`` and
    ``dL/dy`` are cast to it, ``y`` and ``dL/dx = dL/dy @ W`` are cast back to ``x``'s dtype,
    and the bias is added in ``x``'s dtype.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
                mins: torch.Tensor, bias: torch.Tensor | None, in_features: int,
                compute_dtype: torch.dtype | None) -> torch.Tensor:
        dtype = compute_dtype or x.dtype
        weight = dequantize_q4(codes, scales, mins, in_features, dtype)
        ctx.save_for_backward(codes, scales, mins)
        ctx.in_features = in_features
        ctx.dtypes = (x.dtype, dtype)
        ctx.has_bias = bias is not None
        if dtype == x.dtype:
            return F.linear(x, weight, None if bias is None else bias.to(dtype))
        y = F.linear(x.to(dtype), weight).to(x.dtype)
        return y if bias is None else y + bias.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        codes, scales, mins = ctx.saved_tensors
        x_dtype, dtype = ctx.dtypes
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            weight = dequantize_q4(codes, scales, mins, ctx.in_features, dtype)
            grad_x = (grad_out.to(dtype) @ weight).to(x_dtype)  # (..., out) @ (out, in)
        if ctx.has_bias and ctx.needs_input_grad[4]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, None, None, None, grad_bias, None, None


class Linear4bit(nn.Module):
    """A linear layer ``y = x W^T + b`` whose frozen weight ``W`` ``(out, in)`` is stored in
    4-bit Q4_1-style blocks (see the module docstring).

    Buffers: ``codes`` ``(out, nb, B/2)`` uint8, ``scales`` and ``mins`` ``(out, nb)`` float16,
    ``nb = ceil(in / B)``; they follow ``.to()`` and ``state_dict``. ``bias`` ``(out,)`` is a
    parameter with ``requires_grad=False`` (or ``None``); the weight never gets a gradient,
    but the input does. Nothing is cached: each forward dequantises the weight (``out * in``
    numbers, freed after the call) and the backward does it once more.

    ``compute_dtype``: dtype of the matrix products (``None``: the input's dtype). On CPUs
    with bfloat16 instructions ``torch.bfloat16`` is several times faster than float32, at
    bfloat16 precision for ``y`` and ``dL/dx``; outputs and input gradients stay in the
    input's dtype either way.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 block_size: int = Q4_1_BLOCK, device: torch.device | str | None = None,
                 compute_dtype: torch.dtype | None = None):
        super().__init__()
        if block_size < 2 or block_size % 2:
            raise ValueError(f"block_size must be an even number >= 2, got {block_size}")
        self.in_features = in_features
        self.out_features = out_features
        self.block_size = block_size
        self.compute_dtype = compute_dtype
        n_blocks = -(-in_features // block_size)
        self.register_buffer("codes", torch.zeros(out_features, n_blocks, block_size // 2,
                                                  dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.zeros(out_features, n_blocks,
                                                   dtype=torch.float16, device=device))
        self.register_buffer("mins", torch.zeros(out_features, n_blocks,
                                                 dtype=torch.float16, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device),
                                     requires_grad=False)
        else:
            self.register_parameter("bias", None)

    def _set_blocks(self, codes: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor
                    ) -> None:
        """Install packed blocks (shapes as the buffers)."""
        for name, value in (("codes", codes), ("scales", scales), ("mins", mins)):
            buf = getattr(self, name)
            if value.shape != buf.shape or value.dtype != buf.dtype:
                raise ValueError(f"{name}: expected {tuple(buf.shape)} {buf.dtype}, "
                                 f"got {tuple(value.shape)} {value.dtype}")
            setattr(self, name, value.to(buf.device).contiguous())

    @classmethod
    def from_linear(cls, linear: nn.Linear, block_size: int = Q4_1_BLOCK,
                    compute_dtype: torch.dtype | None = None) -> Linear4bit:
        """Quantise a float ``nn.Linear`` with :func:`quantize_q4` (bias kept in float32)."""
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    block_size, device=w.device, compute_dtype=compute_dtype)
        layer._set_blocks(*quantize_q4(w, block_size))
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach().float())
        return layer

    @classmethod
    def from_q4_1_blocks(cls, data: np.ndarray | torch.Tensor, in_features: int,
                         out_features: int, bias: torch.Tensor | None = None,
                         row_order: torch.Tensor | np.ndarray | None = None,
                         compute_dtype: torch.dtype | None = None) -> Linear4bit:
        """Build from raw GGUF Q4_1 data, keeping its blocks bit for bit.

        ``data``: the tensor's bytes, ``out_features`` rows of ``in_features / 32`` blocks of
        20 bytes (``GGUFReader(...).tensors[i].data``: ``(out, in / 32 * 20)`` uint8).
        ``row_order``: optional ``(out,)`` index; output row ``i`` of the layer is the file's
        row ``row_order[i]`` (see :func:`reverse_permute_rows`). ``bias``: optional ``(out,)``.
        """
        if in_features % Q4_1_BLOCK:
            raise ValueError(f"Q4_1 rows hold whole blocks of 32, got in_features={in_features}")
        codes, scales, mins = split_q4_1_blocks(data, out_features)
        if codes.shape[1] * Q4_1_BLOCK != in_features:
            raise ValueError(f"data holds rows of {codes.shape[1] * Q4_1_BLOCK} weights, "
                             f"expected {in_features}")
        if row_order is not None:
            idx = torch.as_tensor(row_order, dtype=torch.long)
            codes, scales, mins = codes[idx], scales[idx], mins[idx]
        layer = cls(in_features, out_features, bias is not None, Q4_1_BLOCK,
                    compute_dtype=compute_dtype)
        layer._set_blocks(codes, scales, mins)
        if bias is not None:
            layer.bias.data.copy_(bias.detach().float())
        return layer

    def dequantized_weight(self) -> torch.Tensor:
        """The weight ``W`` as a float32 ``(out, in)`` tensor (a new tensor, no gradient)."""
        return dequantize_q4(self.codes, self.scales, self.mins, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(..., in)`` -> ``(..., out)`` in ``x``'s dtype; differentiable w.r.t. ``x``
        (and ``bias`` if it requires grad)."""
        return _Dequantized4bitLinear.apply(x, self.codes, self.scales, self.mins, self.bias,
                                            self.in_features, self.compute_dtype)

    def extra_repr(self) -> str:
        """Sizes, bias, block size and compute dtype, for ``print(model)``."""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, block_size={self.block_size}, "
                f"compute_dtype={self.compute_dtype}")


# ----------------------------------------------------------------------------- models


def _bitsandbytes_linear(linear: nn.Linear, quant_type: str, compute_dtype: torch.dtype
                         ) -> nn.Module:
    """``linear`` as a ``bitsandbytes.nn.Linear4bit`` (``quant_type`` "nf4" or "fp4"),
    computing in ``compute_dtype``, quantised on its current device."""
    try:
        import bitsandbytes as bnb
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "backend='bitsandbytes' needs the bitsandbytes package (>= 0.48 runs 4-bit "
            "layers on the CPU); install it without touching torch: "
            "pip install --no-deps bitsandbytes") from exc
    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features,
                              bias=linear.bias is not None, compute_dtype=compute_dtype,
                              quant_type=quant_type)
    layer.load_state_dict(linear.state_dict())
    layer = layer.to(linear.weight.device)  # moving a Params4bit quantises it
    layer.weight.requires_grad_(False)
    if layer.bias is not None:
        layer.bias.requires_grad_(False)
    return layer


def quantize_linears(model: nn.Module, skip: Iterable[str] = ("lm_head",),
                     block_size: int = Q4_1_BLOCK, backend: str = "q4_1",
                     quant_type: str = "nf4", compute_dtype: torch.dtype | None = None) -> int:
    """Replace, in place, every ``nn.Linear`` of ``model`` whose qualified name contains none
    of the ``skip`` substrings by a frozen 4-bit layer; return how many were replaced.

    Only modules of exactly type ``nn.Linear`` are replaced (subclasses, such as the output
    projection of ``nn.MultiheadAttention`` whose weight is read directly, are left alone).
    ``backend="q4_1"`` (default) gives :class:`Linear4bit` with ``block_size`` weights per
    block and ``compute_dtype`` (see there); ``backend="bitsandbytes"`` gives
    ``bitsandbytes.nn.Linear4bit`` layers with ``quant_type`` "nf4" or "fp4", computing in
    ``compute_dtype`` or float32 (raises ImportError if the package is missing).
    """
    if backend not in ("q4_1", "bitsandbytes"):
        raise ValueError(f"unknown backend {backend!r}: expected 'q4_1' or 'bitsandbytes'")
    skip = tuple(skip)
    targets = [name for name, module in model.named_modules()
               if type(module) is nn.Linear and not any(s in name for s in skip)]
    for name in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr)
        if backend == "q4_1":
            new: nn.Module = Linear4bit.from_linear(old, block_size, compute_dtype)
        else:
            new = _bitsandbytes_linear(old, quant_type, compute_dtype or torch.float32)
        setattr(parent, attr, new)
    return len(targets)


def reverse_permute_rows(n_rows: int, n_head: int) -> torch.Tensor:
    """Row order that undoes llama.cpp's permutation of LLaMA q/k projection rows.

    llama.cpp stores, per head of ``2h = n_rows / n_head`` rows, first the rows at even
    positions, then those at odd positions (interleaved rotary pairs). Hugging Face row
    ``(head, j, half)`` with ``j < h``, ``half in {0, 1}``, i.e. ``head * 2h + half * h + j``,
    is the file's row ``head * 2h + 2j + half``. Returns that ``(n_rows,)`` index: HF weight =
    file weight ``[index]``. (For k, ``n_head`` is the number of key/value heads.)
    """
    if n_rows % (2 * n_head):
        raise ValueError(f"{n_rows} rows do not split into {n_head} heads of pairs")
    h = n_rows // n_head // 2
    return torch.arange(n_rows).reshape(n_head, h, 2).transpose(1, 2).reshape(-1)


def gguf_linear_name(gguf_name: str) -> str | None:
    """The Hugging Face LLaMA module of a GGUF block weight, e.g. ``blk.0.attn_q.weight`` ->
    ``model.layers.0.self_attn.q_proj``; ``None`` for tensors that are no such linear layer."""
    match = _GGUF_LINEAR.fullmatch(gguf_name)
    if match is None:
        return None
    return f"model.layers.{match.group(1)}.{_GGUF_TO_HF[match.group(2)]}"


def load_gguf_4bit(gguf_path: str | Path, compute_dtype: torch.dtype | None = None
                   ) -> nn.Module:
    """A Hugging Face ``LlamaForCausalLM`` whose transformer-block linear layers use the GGUF
    file's own Q4_1 blocks.

    The model is first built in float32 by transformers' GGUF loader (which dequantises every
    tensor); then each ``blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down}``
    tensor of type Q4_1 replaces its ``nn.Linear`` by :class:`Linear4bit` built from the raw
    bytes (q/k rows reordered by :func:`reverse_permute_rows`, as transformers does). Other
    tensors (embeddings, norms, non-Q4_1 weights) stay float32. ``compute_dtype``: see
    :class:`Linear4bit`. Returned in eval mode.
    """
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    path = Path(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32)
    config = model.config
    n_head = config.num_attention_heads
    n_kv_head = getattr(config, "num_key_value_heads", None) or n_head
    reader = GGUFReader(path)
    for tensor in reader.tensors:
        name = gguf_linear_name(tensor.name)
        if name is None or int(tensor.tensor_type) != GGUF_Q4_1_TYPE:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, attr)
        row_order = None
        if tensor.name.endswith(".attn_q.weight"):
            row_order = reverse_permute_rows(old.out_features, n_head)
        elif tensor.name.endswith(".attn_k.weight"):
            row_order = reverse_permute_rows(old.out_features, n_kv_head)
        new = Linear4bit.from_q4_1_blocks(tensor.data, old.in_features, old.out_features,
                                          bias=old.bias, row_order=row_order,
                                          compute_dtype=compute_dtype)
        setattr(parent, attr, new)
    return model.eval()


def linear_weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes held by the weights of the linear layers of ``model``: ``{"float": ...,
    "4bit": ...}`` summing ``nn.Linear`` weights (at their dtype) and :class:`Linear4bit`
    codes + scales + mins (biases and other layers not counted)."""
    sizes = {"float": 0, "4bit": 0}
    for module in model.modules():
        if isinstance(module, Linear4bit):
            sizes["4bit"] += sum(b.numel() * b.element_size()
                                 for b in (module.codes, module.scales, module.mins))
        elif type(module) is nn.Linear:
            sizes["float"] += module.weight.numel() * module.weight.element_size()
    return sizes
