"""MCNC options measured on the held-in set (results/held-in): alpha initialisation, beta
learning rate and warm-up."""


import pytest
import torch
from torch import nn

import mcnc
from mcnc.apps.loop import param_groups, warmup_cosine


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))


def test_alpha_init_scale_keeps_alphas_near_the_centre():
    model = mcnc.compress(mlp(), mcnc.MCNCConfig(k=4, d=100, width=8, alpha_init_scale=0.1))
    assert model.alpha.abs().max() <= 2.0 and model.alpha.abs().max() > 1.5  # 0.1 * L=20


def test_beta_gets_its_own_rate_and_warmup_rises_first():
    model = mcnc.compress(mlp(), mcnc.MCNCConfig(k=4, d=100, width=8))
    groups = param_groups(model, 0.3, 1e-3, beta_lr_scale=0.1, beta_rate="absolute")
    assert [(g["lr"], len(g["params"])) for g in groups] == [(0.3, 1), (0.3 * 0.1, 1)]
    with pytest.raises(ValueError, match=r"\['gamma'\]: mcnc has no such rate"):
        param_groups(model, 0.3, 1e-3, gamma=2.0)
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
