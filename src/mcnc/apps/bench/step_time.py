"""Training speed: the time of one optimiser step of an MCNC model against the same model dense
(classifiers) or with a LoRA adapter (language models), on fixed synthetic batches.

Each step is a whole training step: forward, loss, backward, optimiser update and MCNC's
alpha folding, as :func:`mcnc.apps.loop.train_step` and ``mcnc finetune`` do it. peft's peers
(Uni-LoRA, VeRA, FourierFT) take the same step through peft itself, each on its own copy of the
base model, sized to the same budget as ``mcnc finetune`` sizes them
(:func:`mcnc.apps.peers.peer_config`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from mcnc.adapters import AdapterModel, LoRAAdapterConfig, MCNCAdapterConfig, NOLAAdapterConfig
from mcnc.adapters.config import AdapterConfig
from mcnc.adapters.sources import AdaptedLayer, FactorLayout, d_for_budget
from mcnc.apps.bench.breakdown import training_stages
from mcnc.apps.bench.cases import Case
from mcnc.apps.loop import param_groups, train_step
from mcnc.apps.methods import build_method
from mcnc.apps.peers import peer_config
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
    return cases + training_stages(model, workload, batch)  # the last model: MCNC's


def adapter_configs(model: AdapterModel, budget: int, rank: int = 16
                    ) -> dict[str, AdapterConfig]:
    """LoRA, MCNC at ``budget`` trained numbers (d chosen to fit) and NOLA at the same budget,
    on every linear layer."""
    mcnc = MCNCAdapterConfig(rank=rank)
    layout = FactorLayout(model.select_targets(mcnc), rank)
    mcnc = MCNCAdapterConfig(rank=rank, d=d_for_budget(layout, budget, mcnc))
    return {"lora": LoRAAdapterConfig(rank=rank), "mcnc": mcnc,
            "nola": NOLAAdapterConfig(rank=rank, coefficients=budget)}


PEER_TRAINING = ("unilora", "vera", "fourierft")
"""peft's peers whose training step is timed beside mcnc's adapters."""


def peer_training_case(workload: str, method: str, base: nn.Module,
                       targets: tuple[AdaptedLayer, ...], budget: int,
                       ids: torch.Tensor) -> Case:
    """One training step of peft's ``method`` on ``base`` (changed in place) at ``budget``
    trained numbers over ``targets`` (VeRA trains more: it cannot go lower), as
    ``mcnc finetune --method METHOD`` trains it: AdamW at the peer's default rate."""
    import peft

    config = peer_config(method, budget, [(t.out_features, t.in_features) for t in targets],
                         [t.name for t in targets])
    model = peft.get_peft_model(base, config).train()
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=adapter_lr(method), weight_decay=0)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    batch, tokens = ids.shape
    return Case("training", workload, method, step, batch * tokens, "tokens",
                {"trained": sum(p.numel() for p in trained),
                 "batch": f"{batch} x {tokens} tokens"}, calls=2, warmup=2)


def adapter_training_cases(workload: str, base: nn.Module, budget: int, batch: int,
                           tokens: int) -> list[Case]:
    """One training step of each adapter (LoRA the reference; NOLA's bases regenerated on the
    fly, as in the paper's comparison; then peft's Uni-LoRA, VeRA and FourierFT, each on its
    own copy of ``base``) on a fixed batch of random token ids."""
    peer_bases = {method: copy.deepcopy(base) for method in PEER_TRAINING}
    model = AdapterModel(base)
    targets = model.select_targets(LoRAAdapterConfig())  # the layers all adapters adapt
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
    for method, copy_of_base in peer_bases.items():
        cases.append(peer_training_case(workload, method, copy_of_base, targets, budget, ids))
    return cases
