"""Writes tests/data/adapter_v3/ and its logits: a jointly mixed MCNC adapter folder as the
code of adapter format version 3 wrote it (commit 71d6791, before version 4 moved the digests
into one), trained a few steps. test_compatibility.py checks that today's code reloads it to the
same logits. Run once; never regenerate it to make a failing test pass.
"""

import sys
from pathlib import Path

import safetensors.torch
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
import manifold_cases

HERE = Path(__file__).parent
adapter = manifold_cases._adapter(mixing="hadamard-joint", joint_start=0.5)
manifold_cases.train_a_few_steps(adapter)
adapter.save_pretrained(HERE / "adapter_v3")
with torch.no_grad():
    logits = adapter(manifold_cases.adapter_input())
safetensors.torch.save_file({"logits": logits}, HERE / "adapter_v3_logits.safetensors")
