"""Default learning rates: one table for every command and API, and where each rate comes from.

``CLASSIFIER_LR``: Adam's rate of each compression method's own numbers in ``mcnc train`` and
``mcnc compare`` (dense leftovers train at their own ``dense_lr``), from ``mcnc compare --preset
lr`` (results/lr/table.md, MNIST MLP): the best rate, except where the best diverged on LeNet-5
in the quick preset (MCNC at 1.0, pruning at 0.1): there the next lower rate of the sweep.
PyTorch's usual 1e-3 for dense and LoRA, which the sweep does not cover.

``DEMO_LR``: ``mcnc demo``'s rate of alpha and beta, from the generator-design runs
(``python benchmarks/generator_design.py``).

``ADAPTER_LR``: AdamW's rate of each adapter in ``mcnc finetune`` at its default budget of
6,000 trained numbers and 300 steps: the best rate of the side-by-side sweep on SmolLM2-135M
(results/finetune-peers/table.md, cells ``@ 6,000``, the best strictly inside its rungs). VeRA
and RandLoRA cannot be set that small: their rates are those of their documented defaults
there (``vera default``, ``randlora default``); LoRA's and peft's LoRA's that of ``lora r1``.
Another budget may want another rate (at 26,880 the best rates were about 3x lower): pass
``lr``.
"""

from __future__ import annotations

CLASSIFIER_LR = {"dense": 1e-3, "mcnc": 0.3, "mcnc-lowrank": 0.3, "pranc": 0.3, "nola": 0.3,
                 "lora": 1e-3, "pruning": 0.03}
DEMO_LR = 0.2
ADAPTER_LR = {"mcnc": 0.3, "nola": 0.1, "lora": 3e-3, "fourierft": 0.3, "unilora": 0.1,
              "tinylora": 1e-3, "vblora": 1e-2, "vera": 3e-2, "randlora": 3e-4,
              "peft-lora": 3e-3}
ADAPTER_STEPS = 300
"""The length of the sweep behind ``ADAPTER_LR``, ``mcnc finetune``'s default."""


def classifier_lr(method: str) -> float:
    """The default rate of ``method``'s own numbers in image-classifier training."""
    return CLASSIFIER_LR[method]


def adapter_lr(method: str) -> float:
    """The default rate of an adapter ``method`` (mcnc's own, or one of peft's).

    Raises:
        ValueError: no sweep has measured one for ``method`` yet.
    """
    if method not in ADAPTER_LR:
        raise ValueError(f"{method} has no measured default learning rate yet (no sweep of it "
                         "in results/finetune-peers); pass --lr")
    return ADAPTER_LR[method]
