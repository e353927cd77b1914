import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toymodels import Tied, example_input, fit, make

import mcnc
from mcnc.core.generator import fold_into_cube
from mcnc.core.layout import plan_layout


def test_a_checkpoint_that_names_alpha_and_beta_at_the_top_level_loads():
    m = mcnc.compress(make("odd"), mcnc.MCNCConfig(k=3, d=64, m=2, width=8))
    old = {k.removeprefix("manifold."): v + 1 for k, v in m.state_dict().items()}
    fresh = mcnc.compress(make("odd"), mcnc.MCNCConfig(k=3, d=64, m=2, width=8))
    fresh.load_state_dict(old, strict=True)
    assert torch.equal(fresh.alpha, m.alpha + 1) and torch.equal(fresh.beta, m.beta + 1)


def test_accounting_with_tail_chunk_conv_embedding_and_no_bias():
    model = make("odd")
    m = mcnc.compress(model, mcnc.MCNCConfig(k=3, d=64, m=2, width=8))
    names = [t.name for t in m.layout.targets]
    assert names == ["emb.weight", "conv.weight", "head.weight", "head.bias"]
    assert m.layout.total == 77 + 105 + 15 + 3  # 200: 3 full chunks and a tail of 8
    assert m.alpha.shape == (4, 2, 3) and m.beta.shape == (4, 2)
    trainable = {n: p.numel() for n, p in m.named_parameters()}
    assert trainable == {"manifold.alpha": 24, "manifold.beta": 8, "base.norm.weight": 5,
                         "base.norm.bias": 5}
    s = mcnc.summarize(m)
    assert s.original_params == 210
    assert s.trainable_params == 42
    assert sum(r.trainable for r in s.rows) == pytest.approx(42)
    assert {r.name: r.original for r in s.rows} == {"emb": 77, "conv": 105, "norm": 10,
                                                    "head": 18}
    assert s.param_ratio == pytest.approx(210 / 42)
    assert "total" in s.table()


@pytest.mark.parametrize(("rule", "second"), [("when-smaller", None), ("always", 2)])
def test_lowrank_rank_rule(rule, second):
    model = nn.Sequential(nn.Linear(100, 80), nn.Linear(80, 2), nn.Conv2d(16, 32, 3))
    config = mcnc.MCNCConfig(mode="lowrank", rank=4, d=128, factor_rule=rule)
    layout = plan_layout(model, config)
    ranks = {t.name: t.rank for t in layout.targets}
    assert ranks == {"0.weight": 4, "0.bias": None, "1.weight": second, "1.bias": None,
                     "2.weight": 4, "2.bias": None}
    sizes = {t.name: t.size for t in layout.targets}
    assert sizes["0.weight"] == 4 * (80 + 100) and sizes["2.weight"] == 4 * (32 + 144)
    m = mcnc.compress(model, mcnc.MCNCConfig(mode="lowrank", rank=4, d=128, width=8,
                                             factor_rule=rule))
    assert torch.linalg.matrix_rank(m.base[0].weight.detach()) == 4
    assert m.base[2].weight.shape == (32, 16, 3, 3)


def test_initial_scale_matches_default_init():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(400, 300), nn.Linear(300, 300))
    reference = model[0].weight.detach().std().item()
    m = mcnc.compress(model, mcnc.MCNCConfig(d=500, width=32))
    assert m.base[0].weight.std().item() == pytest.approx(reference, rel=0.15)
    low = mcnc.compress(nn.Sequential(nn.Linear(400, 300)),
                        mcnc.MCNCConfig(mode="lowrank", rank=16, d=500, width=32))
    assert low.base[0].weight.std().item() == pytest.approx(reference, rel=0.3)


def test_parameters_are_exactly_alpha_beta_and_dense_leftovers():
    m = mcnc.compress(make("convnet"), mcnc.MCNCConfig(k=4, d=100, width=8))
    assert [n for n, _ in m.named_parameters()] == ["manifold.alpha", "manifold.beta",
                                                     "base.1.weight", "base.1.bias"]
    assert "base.1.running_mean" in m.state_dict()
    assert not any(k.startswith("generator") for k in m.state_dict())


def _train(model, x, y, steps=40):
    return fit(model, lambda: F.cross_entropy(model(x), y), steps)


@pytest.mark.parametrize("mode", ["scratch", "lowrank", "delta"])
def test_training_lowers_the_loss(mode):
    x = example_input("convnet")
    y = torch.tensor([0, 1, 2, 3])
    m = mcnc.compress(make("convnet"), mcnc.MCNCConfig(mode=mode, k=8, d=200, rank=2,
                                                       width=32))
    before_theta0 = None if m.theta0 is None else m.theta0.clone()
    losses = _train(m, x, y)
    assert losses[-1] < 0.5 * losses[0]
    if mode == "delta":
        assert torch.equal(m.theta0, before_theta0)
        assert [n for n, p in m.named_parameters() if p.requires_grad] == ["manifold.alpha",
                                                                          "manifold.beta"]


def test_deepcopy_after_a_training_step():
    m = mcnc.compress(make("convnet"), mcnc.MCNCConfig(k=4, d=100, width=8))
    _train(m, example_input("convnet"), torch.tensor([0, 1, 2, 3]), steps=1)
    clone = copy.deepcopy(m).eval()
    with torch.no_grad():
        assert torch.equal(clone(example_input("convnet")), m.eval()(example_input("convnet")))


def test_delta_starts_at_the_base_model():
    base = make("convnet").eval()
    x = example_input("convnet")
    with torch.no_grad():
        expected = base(x)
    m = mcnc.compress(base, mcnc.MCNCConfig(mode="delta", k=4, d=100, width=8)).eval()
    with torch.no_grad():
        assert torch.equal(m(x), expected)


def test_tied_weights_stay_tied():
    m = mcnc.compress(Tied(), mcnc.MCNCConfig(k=3, d=50, width=8))
    [emb] = [t for t in m.layout.targets if t.name == "emb.weight"]
    assert emb.aliases == ("out.weight",)
    m(example_input("tied"))
    assert m.base.emb.weight is m.base.out.weight
    assert set(m.dense_state_dict()) == set(Tied().state_dict())


def test_eval_cache_and_invalidation():
    m = mcnc.compress(make("odd"), mcnc.MCNCConfig(k=3, d=64, width=8)).eval()
    with torch.no_grad():
        first = m.generated_weights()
        assert m.generated_weights() is first
        m.alpha.add_(0.5)
        second = m.generated_weights()
    assert second is not first
    assert not torch.equal(second["emb.weight"], first["emb.weight"])
    out = m(example_input("odd")).sum()  # grad enabled: fresh weights with a graph
    out.backward()
    assert m.alpha.grad is not None and m.alpha.grad.abs().sum() > 0


def test_fold_into_cube():
    L = 2.0
    a = torch.tensor([-2.0, -1.3, 0.0, 1e-9, 1.999, 2.0, 2.5, 5.0, -6.5, 10.0])
    folded = fold_into_cube(a, L)
    assert torch.equal(folded[:6], a[:6])  # inside: bit-identical
    torch.testing.assert_close(folded[6:], torch.tensor([1.5, -1.0, 1.5, 2.0]))
    assert folded.abs().max() <= L
    m = mcnc.compress(make("odd"), mcnc.MCNCConfig(k=3, d=64, L=L, width=8)).eval()
    with torch.no_grad():
        m.alpha.mul_(7)
        x = example_input("odd")
        before = m(x)
        m.fold_alphas_()
        assert m.alpha.abs().max() <= L
        assert torch.equal(m(x), before)


def test_errors_say_what_to_change():
    with pytest.raises(ValueError, match="matched no parameter"):
        mcnc.compress(nn.Sequential(nn.LayerNorm(4)))
    with pytest.raises(ValueError, match="k must be smaller than d"):
        mcnc.MCNCConfig(k=16, d=16)
    with pytest.raises(ValueError, match="mode must be one of"):
        mcnc.MCNCConfig(mode="lora")
    with pytest.raises(ValueError, match="does not match"):
        mcnc.compress(make("odd"), mcnc.MCNCConfig(k=3, d=64),
                      generator=mcnc.Generator(mcnc.GeneratorSpec(k=4, d=64)))


def test_refuses_half_precision_and_double_compression():
    with pytest.raises(ValueError, match=r"expects float32 parameters.*model.float\(\)"):
        mcnc.compress(make("odd").half(), mcnc.MCNCConfig(k=3, d=64))
    m = mcnc.compress(make("odd"), mcnc.MCNCConfig(k=3, d=64, width=8))
    with pytest.raises(ValueError, match="already compressed"):
        mcnc.compress(m, mcnc.MCNCConfig(k=3, d=64, width=8))


def test_regex_selection_and_dtype_moves():
    m = mcnc.compress(make("odd"), mcnc.MCNCConfig(k=3, d=32, width=8, target_regex=r"^head\."))
    assert [t.name for t in m.layout.targets] == ["head.weight", "head.bias"]
    assert "base.emb.weight" in dict(m.named_parameters())
    m = m.double()
    assert m.base.head.weight.dtype == torch.float64
    assert m(example_input("odd")).dtype == torch.float64


def test_lowrank_factors_every_kernel_by_default_and_when_smaller_on_request():
    from mcnc.models import build_model

    def ranks(rule):
        model = build_model("resnet20", 1, 28, 10)
        config = mcnc.MCNCConfig(mode="lowrank", rank=64, k=8, d=400, factor_rule=rule)
        return [t.rank for t in mcnc.compress(model, config).layout.targets]

    always, smaller = ranks("always"), ranks("when-smaller")
    assert always[-1] is None and None not in always[:-1]  # 21 kernels and fc; fc.bias direct
    assert always[0] == 9 and max(always[:-1]) == 64  # stem 16 x (1*3*3): min(64, 16, 9)
    assert all(r is None for r in smaller)  # rank 64 saves numbers on no ResNet-20 tensor


def test_torch_compile_fullgraph_trains_and_saves(tmp_path):
    torch.manual_seed(0)
    m = mcnc.compress(nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5)),
                      mcnc.MCNCConfig(k=4, d=100, width=8))
    x = torch.randn(3, 20)
    compiled = torch.compile(m, fullgraph=True)  # no graph break in generation or caching
    torch.testing.assert_close(compiled(x), m(x), atol=1e-5, rtol=1e-5)
    compiled(x).sum().backward()
    assert m.alpha.grad is not None
    path = mcnc.save(compiled, tmp_path / "m.mcnc")  # the wrapper's _orig_mod is saved
    skeleton = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    loaded = mcnc.load(path, skeleton, device="cpu")
    assert torch.equal(loaded(x), m(x))


def test_load_and_reconstruct_take_a_device(tmp_path):
    m = mcnc.compress(make("odd"), mcnc.MCNCConfig(k=3, d=64, width=8))
    path = mcnc.save(m, tmp_path / "m.mcnc")
    state = mcnc.reconstruct(path, device="meta")
    assert all(v.device.type == "meta" for v in state.values())
    loaded = mcnc.load(path, make("odd"), device=torch.device("cpu"))
    assert loaded.alpha.device.type == "cpu" and torch.equal(loaded.alpha, m.alpha)
