"""How many numbers peft's small adapters train on SmolLM2-135M, at their documented defaults
and set through their own knobs to the two budgets of the adapter comparison (about 6,000 and
26,880 trained numbers; MCNC and NOLA hit them exactly). Every count is read off the model
peft builds (parameters that require grad), on all 210 linear layers of the 30 blocks.

    python benchmarks/peer_budgets.py --out results/finetune/peer_budgets.md   # ~5 min

The settings come from :func:`mcnc.apps.peers.peer_config`, which ``mcnc finetune --method
<peer> --budget N`` uses too; the fine-tuning runs themselves are not part of this script.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import peft

from mcnc.adapters.targets import select_targets
from mcnc.apps.machine import machine_line
from mcnc.apps.peers import peer_config
from mcnc.llm.models import MODEL_NAMES, build_language_model

BUDGETS = (6_000, 26_880)
KNOBS = {"fourierft": ("n_frequency",), "unilora": ("theta_d_length",), "tinylora": ("u",),
         "vblora": ("r", "vector_length", "num_vectors"), "vera": ("r",), "randlora": ("r",)}
"""The settings :func:`mcnc.apps.peers.peer_config` chooses for a budget, shown per method."""
METHODS = {"FourierFT": "fourierft", "Uni-LoRA": "unilora", "TinyLoRA": "tinylora",
           "VB-LoRA": "vblora", "VeRA": "vera", "RandLoRA": "randlora"}


def trained(base, config) -> tuple[int, object]:
    model = peft.get_peft_model(base, config)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return count, model.unload()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/finetune/peer_budgets.md")
    parser.add_argument("--model", default="smollm2-135m", choices=MODEL_NAMES,
                        help="tiny-llama checks the script in seconds")
    args = parser.parse_args()
    base = build_language_model(args.model)[0]
    targets = select_targets(base, "all-linear")
    layers = [(t.out_features, t.in_features) for t in targets]
    names = [t.name for t in targets]
    lines = [f"# Trained numbers of peft's adapters on {args.model} ({len(layers)} linear "
             "layers)", "",
             "Command: `python benchmarks/peer_budgets.py --out results/finetune/peer_budgets.md`"
             "  ", f"Machine: {machine_line()}  ", f"peft {peft.__version__}", "",
             "| method | documented default | " + " | ".join(
                 f"closest to {b:,}: knobs | trained" for b in BUDGETS) + " |",
             "|---|---:|" + "---|---:|" * len(BUDGETS)]
    for label, method in METHODS.items():
        count, base = trained(base, peer_config(method, None, layers, names))
        cells = [f"{count:,}"]
        for budget in BUDGETS:
            config = peer_config(method, budget, layers, names)
            n, base = trained(base, config)
            knobs = {k: getattr(config, k) for k in KNOBS[method]}
            cells += [", ".join(f"{k}={v}" for k, v in knobs.items()), f"{n:,}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
