"""Regeneration is bit-exact: the same file gives the same weights, to the last bit, in another
process, with 1 or 2 threads, and for every dtype the model is cast to after loading.

The seeded parts (PRNG, generator weights) are exact by construction (tests/test_rng_golden.py);
these tests cover what is computed from them: the generator's matrix products and every cut
and cast on the way to the model's tensors.
"""

import json
import subprocess
import sys

import pytest
import torch

import mcnc
from mcnc.core.fileformat import tensor_digest

SCRIPT = r"""
import json, sys
import torch
torch.set_num_threads(int(sys.argv[2]))
import mcnc
from mcnc.adapters.config import MCNCAdapterConfig
from mcnc.adapters.sources import FactorLayout, MCNCSource
from mcnc.apps.bench.reconstruction import llama7b_targets
from mcnc.core.fileformat import tensor_digest as digest
from mcnc.models import resnet20

out = {"file": digest(mcnc.reconstruct(sys.argv[1]))}
model = mcnc.load(sys.argv[1], resnet20())
layout = FactorLayout(llama7b_targets(2, 1024, 2752), 16)
source = MCNCSource(MCNCAdapterConfig(rank=16, d=3000), layout)
for dtype in (torch.float32, torch.float64, torch.bfloat16):
    name = str(dtype)
    out[f"model {name}"] = digest(model.to(dtype).dense_state_dict())
    with torch.no_grad():
        a, b = source.to(dtype).factors()
    out[f"adapter {name}"] = digest({"a": a, "b": b})
print(json.dumps(out))
"""

DTYPES = ("torch.float32", "torch.float64", "torch.bfloat16")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from mcnc.apps.methods import build_method
    from mcnc.models import resnet20

    torch.manual_seed(0)
    model = build_method("mcnc", resnet20(), 3000)
    with torch.no_grad():  # trained-looking values: alphas all over the cube, varied betas
        model.alpha.uniform_(-30, 30)
        model.beta.mul_(torch.rand_like(model.beta) + 0.5)
    path = tmp_path_factory.mktemp("bits") / "resnet20.mcnc"
    mcnc.save(model, path)
    return path


def _digests(path, threads: int) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(threads)],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_same_bits_across_processes_threads_and_dtypes(saved):
    one, two, again = _digests(saved, 1), _digests(saved, 2), _digests(saved, 2)
    assert set(one) == {"file"} | {f"{kind} {d}" for kind in ("model", "adapter")
                                   for d in DTYPES}
    assert one == two == again
    # and in this process, which has run other work before
    assert tensor_digest(mcnc.reconstruct(saved)) == one["file"]
