"""Writes tests/data/odd_v1.mcnc, the format-version-1 file that test_compatibility.py pins.

Run once when the fixture is created; never regenerate it to make a failing test pass:
a new file format gets a new fixture next to this one.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from toymodels import make

import mcnc

model = mcnc.compress(make("odd"), mcnc.MCNCConfig(k=3, d=64, m=2, width=8, seed=7))
with torch.no_grad():
    g = torch.Generator().manual_seed(3)
    model.alpha.add_(torch.randn(model.alpha.shape, generator=g))
    model.beta.mul_(1.5)
    model.base.norm.weight.add_(0.25)
mcnc.save(model, Path(__file__).with_name("odd_v1.mcnc"))
