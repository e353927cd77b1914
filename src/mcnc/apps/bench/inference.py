"""Serving speed: forward passes of a language model with MCNC adapters, one batch holding 1, 4
or 16 distinct adapters (``adapter_names``), against the same model with one adapter merged
into its weights (no adapter cost at all), in tokens per second.

Adapters are in eval mode under ``torch.no_grad()``, so their factors are generated once and
cached; the cost measured is that of applying them. What generating them costs is measured
separately (``mcnc x16``: the factors of all 16 adapters in one generator call).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mcnc.adapters import AdapterModel, MCNCAdapterConfig
from mcnc.adapters.sources import generate_all
from mcnc.apps.bench.cases import Case

ADAPTER_COUNTS = (1, 4, 16)


def _distinct_adapters(model: AdapterModel, count: int, rank: int) -> list[str]:
    """``count`` MCNC adapters sharing one generator, each with its own random alphas and
    betas (B's amplitudes are non-zero, as after training)."""
    g = torch.Generator().manual_seed(1)
    names = [f"adapter{i}" for i in range(count)]
    for name in names:
        source = model.add_adapter(name, MCNCAdapterConfig(rank=rank))
        with torch.no_grad():
            source.alpha.uniform_(-source.config.L, source.config.L, generator=g)
            source.beta.copy_(source.beta.abs().max() * torch.rand(source.beta.shape,
                                                                    generator=g))
    return names


def inference_cases(workload: str, base: nn.Module, batch: int, tokens: int, rank: int = 16
                    ) -> tuple[list[Case], Case]:
    """Forward-pass cases (merged reference, one active adapter, mixed batches) and the case
    that generates all adapters' factors at once."""
    merged = copy.deepcopy(base)
    model = AdapterModel(base).eval()
    names = _distinct_adapters(model, max(ADAPTER_COUNTS), rank)
    model.set_adapter(names[0])
    merged = AdapterModel(merged)
    merged.add_adapter(names[0], model.adapters[names[0]].config)
    merged.adapters[names[0]].load_state_dict(model.adapters[names[0]].state_dict())
    merged = merged.merge_and_unload().eval()
    ids = torch.randint(0, base.config.vocab_size, (batch, tokens),
                        generator=torch.Generator().manual_seed(0))
    info = {"batch": f"{batch} x {tokens} tokens"}

    def forward(net: nn.Module, adapter_names: list[str] | None = None):
        kwargs = {} if adapter_names is None else {"adapter_names": adapter_names}
        with torch.no_grad():
            return net(input_ids=ids, **kwargs).logits

    cases = [Case("inference", workload, "merged", lambda: forward(merged), batch * tokens,
                  "tokens", info, calls=2),
             Case("inference", workload, "1 adapter, unmerged", lambda: forward(model),
                  batch * tokens, "tokens", info, calls=2)]
    for count in ADAPTER_COUNTS:
        per_sample = [names[i % count] for i in range(batch)]
        cases.append(Case("inference", workload, f"mixed batch, {count} adapters",
                          lambda per_sample=per_sample: forward(model, per_sample),
                          batch * tokens, "tokens", {**info, "distinct_adapters": count},
                          calls=2))

    sources = [model.adapters[n] for n in names]

    def generate():
        with torch.no_grad():
            return generate_all(dict(zip(names, sources, strict=True)))

    weights = sum(s.layout.total_a + s.layout.total_b for s in sources)
    generation = Case("reconstruction", f"{workload} adapters", f"mcnc x{len(names)}",
                      generate, weights, "weights",
                      {"trained": sum(s.alpha.numel() + s.beta.numel() for s in sources),
                       "generation_flops_per_weight":
                           sum(s.generation_flops() for s in sources) / weights,
                       "note": "all adapters in one generator call"}, calls=3)
    return cases, generation
