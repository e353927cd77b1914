"""How many numbers peft's small adapters train on SmolLM2-135M, at their documented defaults
and set through their own knobs to the two budgets of the adapter comparison (about 6,000 and
26,880 trained numbers; MCNC and NOLA hit them exactly). Every count is read off the model
peft builds (parameters that require grad), on all 210 linear layers of the 30 blocks.

    python benchmarks/peer_budgets.py --out results/finetune/peer_budgets.md   # ~5 min

This fixes the settings of the side-by-side fine-tuning runs; the runs themselves are not
part of this script.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import peft

from mcnc.llm.models import load_smollm2
from mcnc.machine import machine_line

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BUDGETS = (6_000, 26_880)
LAYERS = 210
SUBVECTORS = 305_280 // 192
"""VB-LoRA at vector length 192 (the largest that divides 576, 192 and 1536) and rank 1: each
layer's A and B are cut into (in + out) / 192 sub-vectors, 1,590 in all."""


def settings(budget: int) -> dict[str, tuple[str, object]]:
    """Method -> (knobs in words, peft config) closest to ``budget`` trained numbers."""
    per_layer = round(budget / LAYERS)
    vectors = max(1, round(budget / (SUBVECTORS + 192)))
    return {
        "FourierFT": (f"n_frequency={per_layer}",
                      peft.FourierFTConfig(n_frequency=per_layer, target_modules=TARGETS)),
        "Uni-LoRA": (f"theta_d_length={budget}",
                     peft.UniLoraConfig(theta_d_length=budget, target_modules=TARGETS)),
        "TinyLoRA": (f"u={per_layer}", peft.TinyLoraConfig(u=per_layer, target_modules=TARGETS)),
        "VB-LoRA": (f"r=1, vector_length=192, num_vectors={vectors}",
                    peft.VBLoRAConfig(r=1, vector_length=192, num_vectors=vectors,
                                      target_modules=TARGETS)),
        "VeRA": ("r=1 (its smallest)", peft.VeraConfig(r=1, target_modules=TARGETS)),
        "RandLoRA": ("r=1 (its smallest)", peft.RandLoraConfig(r=1, target_modules=TARGETS)),
    }


DEFAULTS = {
    "FourierFT": peft.FourierFTConfig(target_modules=TARGETS),
    "Uni-LoRA": peft.UniLoraConfig(target_modules=TARGETS),
    "TinyLoRA": peft.TinyLoraConfig(target_modules=TARGETS),
    "VB-LoRA": peft.VBLoRAConfig(target_modules=TARGETS, vector_length=192),
    "VeRA": peft.VeraConfig(target_modules=TARGETS),
    "RandLoRA": peft.RandLoraConfig(target_modules=TARGETS),
    "LoRA r1": peft.LoraConfig(r=1, target_modules=TARGETS),
}


def trained(base, config) -> tuple[int, object]:
    model = peft.get_peft_model(base, config)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return count, model.unload()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/finetune/peer_budgets.md")
    args = parser.parse_args()
    base = load_smollm2()
    lines = ["# Trained numbers of peft's adapters on SmolLM2-135M (210 linear layers)", "",
             "Command: `python benchmarks/peer_budgets.py --out results/finetune/peer_budgets.md`"
             "  ", f"Machine: {machine_line()}  ", f"peft {peft.__version__}", "",
             "| method | documented default | " + " | ".join(
                 f"closest to {b:,}: knobs | trained" for b in BUDGETS) + " |",
             "|---|---:|" + "---|---:|" * len(BUDGETS)]
    for method, default in DEFAULTS.items():
        count, base = trained(base, default)
        cells = [f"{count:,}"]
        for budget in BUDGETS:
            if method not in settings(budget):
                cells += ["-", "-"]
                continue
            knobs, config = settings(budget)[method]
            n, base = trained(base, config)
            cells += [knobs, f"{n:,}"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
