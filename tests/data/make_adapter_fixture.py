"""Writes one adapter fixture folder under tests/data/ and its logits: a small MCNC adapter
trained a few steps and saved by the code of the commit named below, so that
test_manifold_reference.py can check that today's code reloads it to the same logits. Run each
once, at its commit; never regenerate one to make a failing test pass.

    adapter_v3            jointly mixed, adapter format version 3 (commit 71d6791, before
                          version 4 moved the digests into one)
    adapter_v4_unmixed    the adapter's defaults before version 0.3 (commit 5413370: no
                          mixing, so the folder records ``"mixing": "none"``)

    PYTHONPATH=<checkout of the commit>/src python tests/data/make_adapter_fixture.py NAME
"""

import sys
from pathlib import Path

import safetensors.torch
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
import manifold_cases

HERE = Path(__file__).parent
FIXTURES = {"adapter_v3": {"mixing": "hadamard-joint", "joint_start": 0.5},
            "adapter_v4_unmixed": {}}

name = sys.argv[1]
adapter = manifold_cases._adapter(**FIXTURES[name])
manifold_cases.train_a_few_steps(adapter)
adapter.save_pretrained(HERE / name)
with torch.no_grad():
    logits = adapter(manifold_cases.adapter_input())
safetensors.torch.save_file({"logits": logits}, HERE / f"{name}_logits.safetensors")
