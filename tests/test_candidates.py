"""The experimental MCNC options measured on the held-in set (results/held-in): seeded offset,
per-layer scale, alpha initialisation, beta learning rate and warm-up."""

import math

import pytest
import torch
from torch import nn

import mcnc
from mcnc.loop import param_groups, warmup_cosine


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))


def test_seeded_offset_adds_a_default_initialisation():
    plain = mcnc.compress(mlp(), mcnc.MCNCConfig(k=4, d=100, width=8))
    offset = mcnc.compress(mlp(), mcnc.MCNCConfig(k=4, d=100, width=8, offset="seeded"))
    w_plain, w_offset = plain.dense_state_dict(), offset.dense_state_dict()
    theta0 = w_offset["0.weight"] - w_plain["0.weight"]  # same alphas and betas
    bound = 1 / math.sqrt(40)
    assert theta0.abs().max() <= bound and theta0.std() == pytest.approx(bound / 3**0.5, rel=0.1)
    again = mcnc.compress(mlp(), mcnc.MCNCConfig(k=4, d=100, width=8, offset="seeded"))
    assert torch.equal(again.dense_state_dict()["0.weight"], w_offset["0.weight"])
    with pytest.raises(ValueError, match="offset are experimental"):
        mcnc.fileformat.to_bytes(offset)
    with pytest.raises(ValueError, match="delta mode"):
        mcnc.MCNCConfig(mode="delta", offset="seeded")


def test_layer_scale_gives_each_layer_its_default_spread():
    model = nn.Sequential(nn.Linear(400, 300), nn.Linear(300, 10))
    config = mcnc.MCNCConfig(k=8, d=2000, width=16, layer_scale=True, mixing="none")
    weights = mcnc.compress(model, config).dense_state_dict()
    for name, fan_in in (("0.weight", 400), ("1.weight", 300)):
        assert weights[name].std() == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.25)


def test_alpha_init_scale_keeps_alphas_near_the_centre():
    model = mcnc.compress(mlp(), mcnc.MCNCConfig(k=4, d=100, width=8, alpha_init_scale=0.1))
    assert model.alpha.abs().max() <= 2.0 and model.alpha.abs().max() > 1.5  # 0.1 * L=20


def test_beta_gets_its_own_rate_and_warmup_rises_first():
    model = mcnc.compress(mlp(), mcnc.MCNCConfig(k=4, d=100, width=8))
    groups = param_groups(model, 0.3, 1e-3, {"beta": 0.1})
    assert [(g["lr"], len(g["params"])) for g in groups] == [(0.3, 1), (0.3 * 0.1, 1)]
    with pytest.raises(ValueError, match="no method tensor named"):
        param_groups(model, 0.3, 1e-3, {"gamma": 2.0})
    opt = torch.optim.Adam(groups)
    schedule = warmup_cosine(opt, 100, warmup=0.1)
    rates = []
    for _ in range(100):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert rates[0] == pytest.approx(0.03) and rates[10] == pytest.approx(0.3)
    assert rates[-1] < 0.001 and max(rates) == pytest.approx(0.3)
    plain = warmup_cosine(torch.optim.Adam(param_groups(model, 0.3, 1e-3)), 100)
    assert isinstance(plain, torch.optim.lr_scheduler.CosineAnnealingLR)
