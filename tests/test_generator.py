import pytest
import torch

from mcnc.apps.coverage import (
    coverage,
    fit_generator,
    plot_curves,
    sliced_wasserstein,
    uniform_sphere,
)
from mcnc.core.generator import Generator, GeneratorSpec


def test_outputs_are_unit_vectors_even_at_zero():
    phi = Generator(GeneratorSpec(k=4, d=50, width=16))
    alpha = torch.cat([torch.zeros(1, 4), torch.rand(9, 4) * 40 - 20])
    out = phi(alpha)
    assert out.shape == (10, 50)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.norm(dim=1), torch.ones(10))


@pytest.mark.parametrize("activation,m", [("sine", 1), ("sine", 3), ("relu", 2), ("linear", 1)])
def test_combine_equals_the_sum_of_scaled_unit_vectors(activation, m):
    """The fused path (norms through W_out^T W_out, one product) is the textbook formula,
    values and gradients alike."""
    g = Generator(GeneratorSpec(k=4, d=300, width=24, depth=2, activation=activation, seed=3))
    alpha = (torch.rand(7, m, 4) * 40 - 20).requires_grad_()
    beta = torch.randn(7, m).requires_grad_()
    fused = g.combine(alpha, beta)
    plain = (g(alpha.reshape(-1, 4)).view(7, m, 300) * beta.unsqueeze(-1)).sum(1)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    weight = torch.randn(7, 300)
    grads = [torch.autograd.grad((out * weight).sum(), (alpha, beta)) for out in (fused, plain)]
    for got, expected in zip(*grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_the_linear_control_is_a_k_dimensional_subspace_in_every_direction():
    """Without activation and biases, phi(alpha) is the unit vector of A alpha: k fixed
    directions, and -alpha gives -phi(alpha) (every direction of the subspace is reached)."""
    g = Generator(GeneratorSpec(k=3, d=50, width=8, depth=2, activation="linear", seed=1))
    alpha = torch.rand(40, 3) * 40 - 20
    assert torch.linalg.matrix_rank(g.raw(alpha).double(), rtol=1e-5) == 3
    torch.testing.assert_close(g(-alpha), -g(alpha))
    sine = Generator(GeneratorSpec(k=3, d=50, width=8, depth=2, seed=1))
    assert torch.linalg.matrix_rank(sine.raw(torch.rand(40, 3) * 40 - 20).double()) > 4


@pytest.mark.parametrize(("field", "value", "message"), [
    ("k", 0, "k must be"), ("d", 8, "k must be smaller than d"), ("L", -1.0, "L must be"),
    ("width", 0, "width must be"), ("depth", 0, "depth must be"),
    ("activation", "tanh", "activation"), ("seed", -3, "seed"),
])
def test_spec_errors_name_the_field(field, value, message):
    kwargs = {"k": 8, "d": 32, field: value}
    with pytest.raises(ValueError, match=message):
        GeneratorSpec(**kwargs)


def test_spec_round_trip_and_flops():
    spec = GeneratorSpec(k=5, d=100, width=32, depth=2)
    assert GeneratorSpec.from_dict(spec.to_dict()) == spec
    assert spec.flops_per_vector() == 2 * (5 * 32 + 32 * 32 + 32 * 100)
    with pytest.raises(ValueError, match="unknown"):
        GeneratorSpec.from_dict({**spec.to_dict(), "bogus": 1})


def test_sliced_wasserstein_zero_for_identical_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    x = uniform_sphere(256, 10, g)
    dirs = uniform_sphere(32, 10, g)
    assert sliced_wasserstein(x, x, dirs).item() == 0.0
    shifted = torch.nn.functional.normalize(x + 2 * torch.eye(10)[0], dim=1)
    assert sliced_wasserstein(x, shifted, dirs).item() > 0.1


def test_sine_covers_the_sphere_better_than_relu():
    sine = coverage(GeneratorSpec(k=16, d=400, width=64), samples=1024, projections=64)
    relu = coverage(GeneratorSpec(k=16, d=400, width=64, activation="relu"), samples=1024,
                    projections=64)
    assert sine.floor == relu.floor
    assert sine.sw < relu.sw


def test_fitting_lowers_the_distance():
    spec = GeneratorSpec(k=2, d=8, L=3.0, width=32, depth=2)
    before = coverage(spec, samples=1024, projections=64)
    fitted = fit_generator(spec, steps=150, batch=512, projections=32, lr=3e-3, progress=False)
    after = coverage(fitted, samples=1024, projections=64)
    assert fitted.fitted
    assert after.sw < 0.7 * before.sw


def test_figure_is_written(tmp_path):
    path = tmp_path / "fig.png"
    plot_curves(str(path), points=200)
    assert path.read_bytes()[:4] == b"\x89PNG"
