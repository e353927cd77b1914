"""Serving speed and memory: forward passes of a language model with many MCNC adapters.

One batch, the same for every row, so that only the number of distinct adapters changes: the
model with one adapter merged into its weights (no adapter cost at all: the reference), the
same adapter unmerged, and mixed batches (``adapter_names``) in which row i uses adapter
``i mod N`` for N = 1, 4, 16, ... up to one adapter per row (:func:`adapter_counts`). A mixed
batch needs at least as many rows as distinct adapters, hence one batch of many short rows.

Adapters are in eval mode under ``torch.no_grad()``, so their factors are generated once and
cached; the time measured is that of applying them. Each mixed-batch row also reports the
memory its N adapters' cached factors hold, summed over the cached tensors
(:func:`cached_factor_bytes`: ``N * 4 * rank * sum(in + out)`` bytes over the adapted layers),
beside the peak extra memory of one forward pass. What generating the factors costs is
measured apart (``mcnc xN``: all adapters' factors again, in one generator call).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from mcnc.adapters import AdapterModel, MCNCAdapterConfig
from mcnc.apps.bench.cases import Case


def adapter_counts(batch: int) -> tuple[int, ...]:
    """The numbers of distinct adapters a batch of ``batch`` rows is measured with: every
    power of 4 below ``batch``, then ``batch`` itself (one adapter per row)."""
    counts, count = [], 1
    while count < batch:
        counts.append(count)
        count *= 4
    return (*counts, batch)


def cached_factor_bytes(model: AdapterModel, names: Iterable[str]) -> int:
    """Bytes of the factors (every adapted layer's ``A`` and ``B``) ``model`` holds cached for
    the adapters ``names``, summed over the tensors (computed first where not cached)."""
    with torch.no_grad():
        factors = model.state.matrices(list(dict.fromkeys(names)))
    return sum(A.nbytes + B.nbytes for layers in factors.values() for A, B in layers.values())


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
    """Forward passes of ``batch`` rows of ``tokens`` tokens (merged reference, one active
    adapter, mixed batches of :func:`adapter_counts` distinct adapters), and the case that
    generates all adapters' factors at once."""
    counts = adapter_counts(batch)
    merged = copy.deepcopy(base)
    model = AdapterModel(base).eval()
    names = _distinct_adapters(model, counts[-1], rank)
    model.set_adapter(names[0])
    merged = AdapterModel(merged)
    merged.add_adapter(names[0], model.adapters[names[0]].config)
    merged.adapters[names[0]].load_state_dict(model.adapters[names[0]].state_dict())
    merged = merged.merge_and_unload().eval()
    cached_factor_bytes(model, names)  # every adapter's factors, in one generator call
    ids = torch.randint(0, base.config.vocab_size, (batch, tokens),
                        generator=torch.Generator().manual_seed(0))
    info = {"batch": f"{batch} x {tokens} tokens"}

    def forward(net: nn.Module, adapter_names: list[str] | None = None):
        kwargs = {} if adapter_names is None else {"adapter_names": adapter_names}
        with torch.no_grad():
            return net(input_ids=ids, **kwargs).logits

    # A forward pass takes seconds at full size: one call per round, one warm-up.
    timing = {"calls": 1, "warmup": 1}
    cases = [Case("inference", workload, "merged", lambda: forward(merged), batch * tokens,
                  "tokens", info, **timing),
             Case("inference", workload, "1 adapter, unmerged", lambda: forward(model),
                  batch * tokens, "tokens",
                  {**info, "cached_factor_bytes": cached_factor_bytes(model, names[:1])},
                  **timing)]
    for count in counts:
        per_sample = [names[i % count] for i in range(batch)]
        variant = f"mixed batch, {count} adapter" + ("s" if count > 1 else "")
        cases.append(Case("inference", workload, variant,
                          lambda per_sample=per_sample: forward(model, per_sample),
                          batch * tokens, "tokens",
                          {**info, "distinct_adapters": count,
                           "cached_factor_bytes": cached_factor_bytes(model, names[:count])},
                          **timing))
    return cases, _generation_case(workload, model, names)


def _generation_case(workload: str, model: AdapterModel, names: list[str]) -> Case:
    """Generating every adapter's factors in one generator call, as a server does once: the
    serving cache is emptied and filled again, so the memory stays that of one set of factors
    (and the peak extra memory leaves out the factors it replaces)."""
    sources = [model.adapters[n] for n in names]

    def regenerate():
        model.state.forget()
        with torch.no_grad():
            return model.state.matrices(names)

    weights = sum(s.layout.total_a + s.layout.total_b for s in sources)
    return Case("reconstruction", f"{workload} adapters", f"mcnc x{len(names)}",
                regenerate, weights, "weights",
                {"trained": sum(s.alpha.numel() + s.beta.numel() for s in sources),
                 "generation_flops_per_weight":
                     sum(s.generation_flops() for s in sources) / weights,
                 "note": "all adapters' factors in one generator call, into the emptied "
                         "serving cache (peak extra memory: beyond the factors it replaces)"},
                calls=1, warmup=1)
