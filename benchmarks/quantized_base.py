"""The 4-bit base on this CPU: SmolLM2-135M with the GGUF file's own Q4_1 blocks against the same
model in float32 (results/quantized_base.{json,md}).

Measured: bytes of the transformer's linear weights, process memory, the largest logit
difference and the loss on a short English text, and the time of a forward + backward pass
(batch 4 x 128 tokens, the base frozen, gradients flowing to the input as they do when an
adapter trains), median over ``--rounds`` rounds that alternate between the variants.

    python benchmarks/quantized_base.py          # ~3 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from mcnc.apps.machine import machine_line
from mcnc.llm.models import load_smollm2, load_smollm2_tokenizer, smollm2_gguf_path
from mcnc.llm.quantized import Linear4bit, linear_weight_bytes, load_gguf_4bit

TEXT = ("The quick brown fox jumps over the lazy dog. Paris is the capital of France, and "
        "London is the capital of the United Kingdom. Water boils at one hundred degrees.")


def _with_compute_dtype(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.compute_dtype = dtype
    return model


def _step_seconds(model: torch.nn.Module, ids: torch.Tensor) -> float:
    start = time.perf_counter()
    model(input_ids=ids, labels=ids).loss.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tokenizer = load_smollm2_tokenizer()
    variants = {"float32": load_smollm2(),
                "4-bit (GGUF Q4_1), float32 compute": load_gguf_4bit(smollm2_gguf_path())}
    variants["4-bit (GGUF Q4_1), bfloat16 compute"] = _with_compute_dtype(
        variants["4-bit (GGUF Q4_1), float32 compute"], torch.bfloat16)
    text = tokenizer(TEXT, return_tensors="pt").input_ids
    rows = {}
    with torch.no_grad():
        reference = variants["float32"](input_ids=text).logits
        for name, model in variants.items():
            logits = model(input_ids=text).logits
            sizes = linear_weight_bytes(model.model.layers)
            rows[name] = {"linear_weight_bytes": sizes["float"] + sizes["4bit"],
                          "max_logit_difference": (logits - reference).abs().max().item(),
                          "text_loss": model(input_ids=text, labels=text).loss.item(),
                          "seconds": []}
    ids = torch.randint(0, 49152, (4, 128), generator=torch.Generator().manual_seed(0))
    for model in variants.values():
        model.train().requires_grad_(False)  # a frozen base, as under an adapter
        model.enable_input_require_grads()  # gradients reach the input, as under an adapter
        _step_seconds(model, ids)  # warm-up
    for _ in range(args.rounds):
        for name, model in variants.items():
            rows[name]["seconds"].append(_step_seconds(model, ids))
    for row in rows.values():
        row["median_seconds"] = statistics.median(row["seconds"])
    result = {"machine": machine_line(), "rounds": args.rounds, "variants": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantized_base.json").write_text(json.dumps(result, indent=2))
    lines = ["# 4-bit base: SmolLM2-135M-Instruct, GGUF Q4_1 blocks vs float32", "",
             "Command: `python benchmarks/quantized_base.py`  ", f"Machine: {machine_line()}",
             "", "Linear weights: the 210 linear layers of the 30 transformer blocks (the tied "
             "embedding / output head stays float32 in every variant). Step: forward + backward "
             f"of a 4 x 128 batch, median of {args.rounds} rounds.", "",
             "| base | linear weights (bytes) | max logit difference | loss on text "
             "| step (s) |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['linear_weight_bytes']:,} | "
                     f"{r['max_logit_difference']:.3g} | {r['text_loss']:.5f} | "
                     f"{r['median_seconds']:.2f} |")
    (out / "quantized_base.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
