"""peft's small adapters, run through peft itself, beside mcnc's in ``mcnc finetune``.

Each peer is set to a budget of trained numbers through its own knobs (the count is then
read off the model peft builds, so it is exact; MCNC and NOLA meet a budget exactly):

=========  ========================================================================
fourierft  ``n_frequency = budget / layers`` spectral coefficients per layer
waveft     ``n_frequency = budget / layers`` wavelet coefficients per layer
unilora    one shared vector: ``theta_d_length = budget``
tinylora   ``u = budget / layers`` numbers per layer
vblora     rank 1, vector length = gcd of the layers' sizes (at most 256), as many bank
           vectors as the budget pays for (bank + top-k logits of every sub-vector)
vera       no knob below ``sum(out) + layers``: rank 1, its smallest
randlora   no knob below its count at the largest rank (RandLoRA trains fewer numbers at
           higher rank: fewer bases): rank = the widest layer's smaller side
peft-lora  ``r = rank`` (peft's own LoRA)
=========  ========================================================================

``budget=None`` takes the method's documented default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

PEERS = ("fourierft", "waveft", "unilora", "tinylora", "vblora", "vera", "randlora", "peft-lora")


def peer_config(method: str, budget: int | None, layers: Sequence[tuple[int, int]],
                targets: list[str], rank: int = 16, peer_rank: int | None = None):
    """The peft config of ``method`` on layers of ``(out, in)`` sizes named by ``targets``,
    closest to ``budget`` trained numbers (``None``: peft's defaults). ``rank``: peft LoRA's
    rank; ``peer_rank``: Uni-LoRA's rank ``r`` (None: peft's default, 4), which does not
    change its number of trained numbers."""
    import peft

    if method not in PEERS:
        raise ValueError(f"unknown peft peer {method!r}; choose one of {PEERS}")
    per_layer = None if budget is None else max(1, round(budget / len(layers)))
    common = {"target_modules": targets}
    if method == "fourierft":
        return peft.FourierFTConfig(**common, **({} if budget is None
                                                 else {"n_frequency": per_layer}))
    if method == "waveft":
        return peft.WaveFTConfig(**common, **({} if budget is None
                                              else {"n_frequency": per_layer}))
    if method == "unilora":
        return peft.UniLoraConfig(**common, **({} if budget is None
                                               else {"theta_d_length": budget}),
                                  **({} if peer_rank is None else {"r": peer_rank}))
    if method == "tinylora":
        return peft.TinyLoraConfig(**common, **({} if budget is None else {"u": per_layer}))
    if method == "vblora":
        length = math.gcd(*(d for shape in layers for d in shape))
        length = max(d for d in range(1, min(length, 256) + 1) if length % d == 0)
        if budget is None:
            return peft.VBLoRAConfig(**common, vector_length=length)
        sub_vectors = sum(o + i for o, i in layers) // length  # rank 1
        vectors = max(2, round(budget / (sub_vectors + length)))
        return peft.VBLoRAConfig(**common, r=1, vector_length=length, num_vectors=vectors)
    if method == "vera":
        return peft.VeraConfig(**common, **({} if budget is None else {"r": 1}))
    if method == "randlora":  # fewer, larger bases train fewer numbers: the largest rank
        widest = max(min(shape) for shape in layers)
        return peft.RandLoraConfig(**common, **({} if budget is None else {"r": widest}))
    return peft.LoraConfig(**common, r=rank, lora_alpha=rank)
