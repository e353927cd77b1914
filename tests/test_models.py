import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mcnc
from mcnc.core.layout import plan_layout
from mcnc.models import (
    MODEL_NAMES,
    build_model,
    lenet5,
    mlp,
    patch_size_for,
    resnet20,
    resnet56,
    small_cnn,
)

SHAPES = [(1, 28), (3, 32), (1, 8), (2, 15), (3, 64)]
"""(channels, image side) combinations every model must accept."""


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_names_and_alias():
    assert MODEL_NAMES == ("mlp", "lenet5", "resnet20", "resnet56", "resnet18", "vit-ti")
    torch.manual_seed(0)
    a = build_model("deit-ti", 1, 8, 10)
    torch.manual_seed(0)
    b = build_model("ViT-Ti", 1, 8, 10)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet50'") as info:
        build_model("resnet50", 3, 32, 10)
    assert all(name in str(info.value) for name in MODEL_NAMES)


@pytest.mark.parametrize("name, channels, size, classes, expected", [
    ("mlp", 1, 28, 10, 784 * 256 + 256 + 256 * 10 + 10),      # 203,530
    ("lenet5", 1, 28, 10, 61_706),
    ("lenet5", 3, 32, 10, 62_006),
    ("resnet20", 3, 32, 10, 272_474),
    ("resnet56", 3, 32, 10, 855_770),
    ("resnet18", 3, 224, 1000, 11_689_512),
    ("deit-ti", 3, 224, 1000, 5_717_416),
])
def test_canonical_parameter_counts(name, channels, size, classes, expected):
    assert n_params(build_model(name, channels, size, classes)) == expected


def test_option_a_shortcuts_have_no_parameters():
    assert n_params(resnet20(shortcut="zeros")) == 272_474 - 2_752
    assert n_params(resnet56(shortcut="zeros")) == 855_770 - 2_752
    x = torch.randn(2, 3, 9, 9)
    assert resnet20(shortcut="zeros").eval()(x).shape == (2, 10)


def test_original_small_models_unchanged():
    assert n_params(mlp()) == 203_530
    assert n_params(lenet5()) == 61_706
    assert n_params(small_cnn()) == 824_650
    assert lenet5()[0].padding == (2, 2) and lenet5()[3].padding == (0, 0)


def test_patch_size_rule():
    sizes = {224: 16, 128: 16, 127: 8, 64: 8, 56: 8, 32: 4, 28: 4, 16: 2, 14: 2, 8: 1}
    assert {s: patch_size_for(s) for s in sizes} == sizes


def test_resnet18_stem_rule():
    assert any(isinstance(m, nn.MaxPool2d) for m in build_model("resnet18", 3, 64, 10).stem)
    small = build_model("resnet18", 3, 63, 10).stem
    assert not any(isinstance(m, nn.MaxPool2d) for m in small)
    assert small[0][0].kernel_size == (3, 3) and small[0][0].stride == (1, 1)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("channels, size", SHAPES)
def test_forward_shapes(name, channels, size):
    model = build_model(name, channels, size, 7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_deit_ti_forward_at_224():
    model = build_model("deit-ti", 3, 224, 1000).eval()
    assert model.pos_embed.shape == (1, 1 + 14 * 14, 192)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_one_backward_pass(name):
    torch.manual_seed(0)
    model = build_model(name, 3, 8, 5).train()
    loss = F.cross_entropy(model(torch.randn(2, 3, 8, 8)), torch.tensor([0, 4]))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_compression_finds_every_weight_matrix(name):
    """Only norms, the class token and the position embeddings stay dense."""
    model = build_model(name, 3, 8, 10)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    targets = {t.name for t in plan_layout(model, mcnc.MCNCConfig()).targets}
    dense = {n for n, _ in model.named_parameters()} - targets
    norms = {f"{n}.{p}" for n, m in model.named_modules()
             if isinstance(m, nn.BatchNorm2d | nn.LayerNorm) for p in ("weight", "bias")}
    assert dense - norms <= {"cls_token", "pos_embed"}
