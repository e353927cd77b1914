"""MCNC vs NOLA at equal budget (and LoRA rank 1 and 16 for scale) fine-tuning SmolLM2-135M on
the English Q/A pairs: the issue's results table (results/finetune/).

1. Learning-rate sweep: every method at four or five learning rates, ``--sweep-steps`` steps each.
2. Main runs: every method at its best swept rate, ``--steps`` steps, the same data order.
3. MCNC again on the 4-bit base (the GGUF file's own Q4_1 blocks, dequantised on the fly).
4. MCNC and NOLA at the paper's budget ratio (64 NOLA coefficients per factor), same lr.
5. The base model's validation loss without any adapter, for reference.

Runs already in ``<out>/runs.jsonl`` are not repeated, so the script can be stopped and
restarted. Throughput figures come from the main runs; run nothing else on the machine
meanwhile.

    python benchmarks/finetune_adapters.py --out results/finetune    # ~2 hours, 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mcnc.apps.finetune import FinetuneSettings, finetune
from mcnc.apps.machine import machine_line

BUDGET = 6000
PAPER_BUDGET = 26_880
"""64 coefficients for each of the 420 factors (30 blocks x 7 layers x A, B), the ratio the
paper's NOLA baseline has on LLaMA-2 7B (64 bases per factor)."""
# label -> (settings overrides, learning rates swept)
METHODS = {
    "MCNC": ({"method": "mcnc", "budget": BUDGET, "rank": 16}, (0.01, 0.05, 0.2, 0.8)),
    "NOLA": ({"method": "nola", "budget": BUDGET, "rank": 16}, (0.003, 0.01, 0.03, 0.1, 0.3)),
    "LoRA r1": ({"method": "lora", "rank": 1}, (3e-4, 1e-3, 3e-3, 1e-2)),
    "LoRA r16": ({"method": "lora", "rank": 16}, (3e-4, 1e-3, 3e-3, 1e-2)),
}


def _key(stage: str, label: str, lr: float, steps: int) -> str:
    return f"{stage}|{label}|{lr:g}|{steps}"


def _done(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    return {r["key"]: r for r in map(json.loads, path.read_text().splitlines())}


def _run(path: Path, done: dict, key: str, settings: FinetuneSettings) -> dict:
    if key not in done:
        result = finetune(settings) | {"key": key}
        with open(path, "a") as f:
            f.write(json.dumps(result) + "\n")
        done[key] = result
    return done[key]


def _table(rows: list[tuple[str, dict]], base_loss: float, args: argparse.Namespace) -> str:
    lines = [
        "# Fine-tuning SmolLM2-135M-Instruct with adapters",
        "",
        f"{args.steps} steps, batch 4, at most 128 tokens, English chatterbot Q/A pairs "
        "(1,044 train / 116 validation); rank 16 on every linear layer of the 30 transformer "
        "blocks for MCNC and NOLA; AdamW, 5% warm-up then cosine decay; learning rate: the best "
        f"of a {args.sweep_steps}-step sweep (sweep.md). Loss per answer token.",
        "",
        f"Command: `python benchmarks/finetune_adapters.py --out {args.out}`  ",
        f"Machine: {machine_line()}",
        "",
        f"Base model without adapter: validation loss {base_loss:.4f}.",
        "",
        "| adapter | trained numbers | adapter file (bytes) | generation FLOPs / forward | lr "
        "| train loss | val loss | train tokens/s | inference tokens/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        lines.append(
            f"| {label} | {r['trainable']:,} | {r['adapter_bytes']:,} | "
            f"{r['generation_flops'] / 1e6:,.0f} M | {r['lr']:g} | {r['train_loss']:.4f} | "
            f"{r['val_loss']:.4f} | {r['train_tokens_per_s']:.0f} | "
            f"{r['inference_tokens_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def _sweep_table(sweep: dict[str, list[dict]]) -> str:
    lines = ["# Learning-rate sweep (validation loss)", "", "| adapter | lr | val loss |",
             "|---|---|---|"]
    for label, runs in sweep.items():
        lines += [f"| {label} | {r['lr']:g} | {r['val_loss']:.4f} |" for r in runs]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/finetune")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--sweep-steps", type=int, default=80)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.jsonl"
    done = _done(path)
    common = {"progress": not args.no_progress}

    sweep: dict[str, list[dict]] = {}
    for label, (overrides, lrs) in METHODS.items():
        sweep[label] = [
            _run(path, done, _key("sweep", label, lr, args.sweep_steps),
                 FinetuneSettings(**overrides, lr=lr, steps=args.sweep_steps, **common))
            for lr in lrs]
    (out / "sweep.md").write_text(_sweep_table(sweep))

    rows = []
    for label, (overrides, _) in METHODS.items():
        best = min(sweep[label], key=lambda r: r["val_loss"])["lr"]
        settings = FinetuneSettings(**overrides, lr=best, steps=args.steps,
                                    out=str(out / label.replace(" ", "-").lower()), **common)
        rows.append((label, _run(path, done, _key("main", label, best, args.steps), settings)))
    mcnc_lr = rows[0][1]["lr"]
    rows.append(("MCNC, 4-bit base", _run(
        path, done, _key("main-4bit", "MCNC", mcnc_lr, args.steps),
        FinetuneSettings(**METHODS["MCNC"][0], lr=mcnc_lr, steps=args.steps, base="gguf-4bit",
                         out=str(out / "mcnc-4bit"), **common))))
    for label in ("MCNC", "NOLA"):  # the paper's ratio: 64 NOLA coefficients per factor
        lr = next(r for name, r in rows if name == label)["lr"]
        overrides = METHODS[label][0] | {"budget": PAPER_BUDGET}
        rows.append((f"{label}, budget {PAPER_BUDGET:,}", _run(
            path, done, _key("main-paper-budget", label, lr, args.steps),
            FinetuneSettings(**overrides, lr=lr, steps=args.steps,
                             out=str(out / f"{label.lower()}-{PAPER_BUDGET}"), **common))))
    base = _run(path, done, _key("base", "none", 0.0, 0),
                FinetuneSettings(method="lora", rank=1, steps=0, **common))
    (out / "table.md").write_text(_table(rows, base["val_loss"], args))
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
