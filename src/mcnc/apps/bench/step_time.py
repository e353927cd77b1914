"""Training speed: the time of one optimiser step of an MCNC model against the same model dense
(classifiers) or with a LoRA adapter (language models), on fixed synthetic batches.

Each step is a whole training step: forward, loss, backward, optimiser update and MCNC's
alpha folding, as :func:`mcnc.apps.loop.train_step` and ``mcnc finetune`` do it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mcnc.adapters import AdapterModel, LoRAAdapterConfig, MCNCAdapterConfig, NOLAAdapterConfig
from mcnc.adapters.config import AdapterConfig
from mcnc.adapters.sources import FactorLayout, d_for_budget
from mcnc.apps.bench.cases import Case
from mcnc.apps.loop import param_groups, train_step
from mcnc.apps.methods import build_method
from mcnc.apps.rates import adapter_lr, classifier_lr


def classifier_cases(workload: str, build: Callable[[], nn.Module], budget: int,
                     batch: int, image: tuple[int, int, int], classes: int = 10) -> list[Case]:
    """Dense (the reference) and MCNC scratch at ``budget`` on one fixed batch of images."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *image, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    cases = []
    for method in ("dense", "mcnc"):
        torch.manual_seed(0)
        model = build_method(method, build(), budget).train()
        optimizer = torch.optim.Adam(param_groups(model, classifier_lr(method), 1e-3))
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)

        def step(model=model, optimizer=optimizer):
            train_step(model, optimizer, x, y)

        cases.append(Case("training", workload, method, step, batch, "examples",
                          {"trained": trained, "batch": batch}, calls=5, warmup=3))
    return cases


def adapter_configs(model: AdapterModel, budget: int, rank: int = 16
                    ) -> dict[str, AdapterConfig]:
    """LoRA, MCNC at ``budget`` trained numbers (d chosen to fit) and NOLA at the same budget,
    on every linear layer."""
    mcnc = MCNCAdapterConfig(rank=rank)
    layout = FactorLayout(model.select_targets(mcnc), rank)
    mcnc = MCNCAdapterConfig(rank=rank, d=d_for_budget(layout, budget, mcnc))
    return {"lora": LoRAAdapterConfig(rank=rank), "mcnc": mcnc,
            "nola": NOLAAdapterConfig(rank=rank, coefficients=budget)}


def adapter_training_cases(workload: str, base: nn.Module, budget: int, batch: int,
                           tokens: int) -> list[Case]:
    """One training step of each adapter (LoRA the reference; NOLA's bases regenerated on the
    fly, as in the paper's comparison) on a fixed batch of random token ids."""
    model = AdapterModel(base)
    for name, config in adapter_configs(model, budget).items():
        model.add_adapter(name, config, **({"max_basis_bytes": 0} if name == "nola" else {}))
    model.train()
    ids = torch.randint(0, base.config.vocab_size, (batch, tokens),
                        generator=torch.Generator().manual_seed(0))
    cases = []
    for name in ("lora", "mcnc", "nola"):
        source = model.adapters[name]
        optimizer = torch.optim.AdamW(source.parameters(), lr=adapter_lr(name), weight_decay=0)

        def step(name=name, optimizer=optimizer):
            model.set_adapter(name)
            loss = model(input_ids=ids, labels=ids).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.after_step()

        trained = sum(p.numel() for p in source.parameters())
        cases.append(Case("training", workload, name, step, batch * tokens, "tokens",
                          {"trained": trained, "batch": f"{batch} x {tokens} tokens",
                           "generation_flops": source.generation_flops()},
                          calls=2, warmup=2))
    return cases
