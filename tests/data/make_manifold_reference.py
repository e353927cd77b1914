"""Writes tests/data/manifold_reference.safetensors and tests/data/adapter_v2/: what the two
MCNC paths (``mcnc.compress`` and the MCNC adapter) trained to in a few steps, and an adapter
folder, both written by the code of commit ef03cb3, before the two paths shared one module.

test_manifold_reference.py checks that today's code gives the same bits. Run once; never
regenerate it to make a failing test pass.
"""

import sys
from pathlib import Path

import safetensors.torch
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
import manifold_cases

import mcnc

HERE = Path(__file__).parent
tensors = {}
for name, build in manifold_cases.CASES.items():
    model = build()
    manifold_cases.train_a_few_steps(model)
    alpha, beta = manifold_cases.alpha_beta(model)
    tensors[f"{name}.alpha"], tensors[f"{name}.beta"] = alpha, beta
safetensors.torch.save_file(tensors, HERE / "manifold_reference.safetensors")

adapter = manifold_cases.CASES["adapter-mixed"]()
manifold_cases.train_a_few_steps(adapter)
adapter.save_pretrained(HERE / "adapter_v2")
with torch.no_grad():
    logits = adapter(manifold_cases.adapter_input())
safetensors.torch.save_file({"logits": logits}, HERE / "adapter_v2_logits.safetensors")

compressed = manifold_cases.CASES["compress-default"]()
manifold_cases.train_a_few_steps(compressed)
mcnc.save(compressed, HERE / "mixed_v2.mcnc")
safetensors.torch.save_file(compressed.dense_state_dict(), HERE / "mixed_v2_weights.safetensors")
