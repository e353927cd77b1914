"""Configuration mistakes raise a ValueError that names the setting and says what to change."""

import pytest
import torch
from torch import nn

import mcnc
from mcnc.apps.methods import MethodSettings, build_method
from mcnc.llm.models import tiny_llama


def small() -> nn.Sequential:
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))


@pytest.mark.parametrize("make,expected", [
    (lambda: mcnc.MCNCConfig(k=16, d=16), "k must be smaller than d.*raise d or lower k"),
    (lambda: mcnc.MCNCConfig(k=4, d=0), r"d must be an integer in \[2, "),
    (lambda: mcnc.MCNCConfig(k=4, d=-5), r"d must be an integer in \[2, "),
    (lambda: mcnc.MCNCConfig(m=0), "m must be a positive integer"),
    (lambda: mcnc.MCNCConfig(width=8192, d=1 << 20), "lower width, depth or d"),
    (lambda: build_method("mcnc", small(), 5, settings=MethodSettings(k=16)),
     r"budget of 5 cannot pay for one chunk of m \* \(k \+ 1\) = 17 numbers; raise the budget"),
    (lambda: build_method("mcnc", small(), 20, settings=MethodSettings(k=4, d=10)),
     "with d=10, the 79 chunks train 395 numbers, more than the budget of 20; raise d"),
    (lambda: build_method("nola", small(), 2),
     "2 coefficients cannot cover 6 pieces.*use at least 6"),
    (lambda: mcnc.compress(small(), mcnc.MCNCConfig(k=4, d=100, target_regex="conv")),
     "target_regex='conv' matched no parameter of Sequential; set target_types or target_regex"),
    (lambda: mcnc.get_adapter_model(tiny_llama(), mcnc.MCNCAdapterConfig(
        target_modules=("qproj",))), r"matched no linear layer; some layer names: \["),
    (lambda: mcnc.compress(small().half(), mcnc.MCNCConfig(k=4, d=100)),
     r"compression expects float32 parameters.*call model.float\(\) first"),
    (lambda: mcnc.compress(small(), mcnc.MCNCConfig(k=4, d=100)).to(torch.complex64)(
        torch.zeros(1, 20)), r"generator computes in .*not torch.complex64.*cast the model"),
    (lambda: mcnc.save(mcnc.compress(small(), mcnc.MCNCConfig(k=4, d=100)), "unused.mcnc",
                       dtype=torch.int8), "dtype must be one of"),
])
def test_mistakes_say_what_to_change(make, expected):
    with pytest.raises(ValueError, match=expected):
        make()


def test_the_message_shows_the_settings_not_a_wall_of_fields():
    with pytest.raises(ValueError) as info:
        mcnc.MCNCConfig(k=16, d=16)
    message = str(info.value)
    assert "k=16, d=16" in message and "target_types" not in message
