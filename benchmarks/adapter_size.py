"""Bytes of an MCNC adapter folder beside peft's Uni-LoRA folder with the same number of
trained numbers, on SmolLM2-135M (all 210 linear layers of the 30 blocks), and what each file
holds. No training: a folder's size does not depend on the values it stores.

    python benchmarks/adapter_size.py --out results/adapter-size.md   # ~1 min

MCNC is written by ``AdapterModel.save_pretrained`` in float32, float16 and bfloat16; Uni-LoRA
by peft's ``save_pretrained`` (float32), set to the budget by :func:`mcnc.apps.peers.peer_config`
as ``mcnc finetune --method unilora --budget N`` does.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import peft
import torch

from mcnc.adapters import AdapterModel, MCNCAdapterConfig
from mcnc.adapters.files import CONFIG_NAME, WEIGHTS_NAME
from mcnc.adapters.sources import FactorLayout, d_for_budget
from mcnc.adapters.targets import select_targets
from mcnc.apps.machine import machine_line
from mcnc.apps.peers import peer_config
from mcnc.llm.models import MODEL_NAMES, build_language_model

BUDGETS = (6_000, 26_880)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def folder_bytes(save) -> tuple[int, int, int]:
    """(tensor file, config file, every file) bytes of the folder ``save(path)`` writes (peft
    also writes a model card, README.md)."""
    with tempfile.TemporaryDirectory() as scratch:
        save(scratch)
        folder = Path(scratch)
        every = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        return ((folder / WEIGHTS_NAME).stat().st_size, (folder / CONFIG_NAME).stat().st_size,
                every)


def row(label: str, budget: int, trained: int, sizes: tuple[int, int, int]) -> str:
    tensors, conf, every = sizes
    return (f"| {label} | {budget:,} | {trained:,} | {tensors:,} | {conf:,} | {tensors + conf:,} "
            f"| {every:,} |")


def mcnc_rows(model_name: str, budget: int) -> list[str]:
    model = AdapterModel(build_language_model(model_name)[0])
    config = MCNCAdapterConfig()
    layout = FactorLayout(model.select_targets(config), config.rank)
    model.add_adapter("default", replace(config, d=d_for_budget(layout, budget, config)))
    trained = model.trainable_count()
    rows = []
    for label, dtype in DTYPES.items():
        sizes = folder_bytes(lambda path, dtype=dtype: model.save_pretrained(path, dtype=dtype))
        rows.append(row(f"MCNC ({label})", budget, trained, sizes))
    return rows


def unilora_row(model_name: str, budget: int) -> str:
    base = build_language_model(model_name)[0]
    targets = select_targets(base, "all-linear")
    config = peer_config("unilora", budget, [(t.out_features, t.in_features) for t in targets],
                         [t.name for t in targets])
    model = peft.get_peft_model(base, config)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return row("Uni-LoRA (peft, float32)", budget, trained, folder_bytes(model.save_pretrained))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/adapter-size.md")
    parser.add_argument("--model", default="smollm2-135m", choices=MODEL_NAMES,
                        help="tiny-llama checks the script in seconds")
    args = parser.parse_args()
    lines = [f"# Adapter folder bytes on {args.model}", "",
             f"Command: `python benchmarks/adapter_size.py --out {args.out}`  ",
             f"Machine: {machine_line()}  ", f"peft {peft.__version__}", "",
             "*tensors + config*: the two files that load; *folder*: every file "
             "`save_pretrained` writes (peft adds a model card, README.md).", "",
             "| adapter | budget | trained numbers | tensor file | config | tensors + config "
             "| folder |", "|---|---:|---:|---:|---:|---:|---:|"]
    for budget in BUDGETS:
        lines += [*mcnc_rows(args.model, budget), unilora_row(args.model, budget)]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
