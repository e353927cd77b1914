"""The ``mcnc`` command line: demo, train, compare, finetune, generate, bench, coverage,
inspect, reconstruct."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mcnc.core.errors import FormatError
from mcnc.core.manifold import BETA_RATES
from mcnc.data.errors import DataError

if TYPE_CHECKING:
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` to an option's help, except where there is nothing to show:
    no default (None) or an off switch (``store_true``)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _version() -> str:
    """The installed distribution's version, else ``mcnc.__version__`` (or ``unknown``)."""
    try:
        return importlib.metadata.version("mcnc")
    except importlib.metadata.PackageNotFoundError:
        import mcnc

        return getattr(mcnc, "__version__", "unknown")


def _default(settings: type, name: str) -> object:
    """The default of field ``name`` of a settings dataclass: the command line shows the
    library's defaults and has none of its own."""
    return next(f.default for f in dataclasses.fields(settings) if f.name == name)


def _add_beta_rate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beta-rate", default="relative", choices=BETA_RATES, help="MCNC: "
                   "'relative' scales beta's rate by its typical size (spread * sqrt(d / m)), so "
                   "that a step moves the weights as far at every budget; 'absolute' does not "
                   "(mcnc before 0.3)")


def _add_command(sub: _Subparsers, name: str, summary: str) -> argparse.ArgumentParser:
    """A sub-command parser; ``summary`` is its line in ``mcnc --help`` and heads its own."""
    return sub.add_parser(name, help=summary, description=summary, formatter_class=_HelpFormatter)


def _add_demo(sub: _Subparsers) -> None:
    """Add ``mcnc demo`` and its options; it runs :func:`_demo`."""
    from mcnc.apps.demo import DemoSettings

    p = _add_command(sub, "demo", "train an MCNC-compressed MNIST classifier (offline)")
    demo = {name: _default(DemoSettings, name)
            for name in ("epochs", "lr", "k", "d", "seed", "limit", "out")}
    p.add_argument("--epochs", type=int, default=demo["epochs"],
                   help="passes over the training images")
    p.add_argument("--lr", type=float, default=demo["lr"], help="Adam lr of alpha and beta")
    p.add_argument("--k", type=int, default=demo["k"],
                   help="manifold dimension: alphas per chunk")
    p.add_argument("--d", type=int, default=demo["d"],
                   help="chunk size: weights per generator output")
    p.add_argument("--seed", type=int, default=demo["seed"], help="random seed of the run")
    p.add_argument("--limit", type=int, default=demo["limit"], help="use only N training images")
    p.add_argument("--out", default=demo["out"], help="output directory")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--no-dense-baseline", action="store_true",
                   help="skip training the uncompressed network for comparison")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> None:
    from mcnc.apps.demo import DemoSettings, run_demo

    run_demo(DemoSettings(epochs=args.epochs, lr=args.lr, k=args.k, d=args.d, seed=args.seed,
                          limit=args.limit, out=args.out, progress=not args.no_progress,
                          dense_baseline=not args.no_dense_baseline))


def _add_generate(sub: _Subparsers) -> None:
    """Add ``mcnc generate`` and its options; it runs :func:`_generate`."""
    from mcnc.apps.generate import GenerateSettings

    p = _add_command(sub, "generate", "text from a base model with an mcnc adapter folder")
    p.add_argument("prompt", help="the user's message (through the chat template unless --raw)")
    p.add_argument("--adapter", required=True, help="an mcnc adapter folder (mcnc finetune "
                   "--out DIR writes DIR/adapter)")
    p.add_argument("--model", help="base model: a name or a local Hugging Face folder or .gguf "
                   "file (default: the one the adapter was trained on)")
    p.add_argument("--max-new-tokens", type=int,
                   default=_default(GenerateSettings, "max_new_tokens"),
                   help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=_default(GenerateSettings, "temperature"),
                   help="0: greedy; above 0: sampled")
    p.add_argument("--top-p", type=float, default=_default(GenerateSettings, "top_p"),
                   help="nucleus sampling (with --temperature > 0)")
    p.add_argument("--seed", type=int, default=_default(GenerateSettings, "seed"),
                   help="seed of the sampling")
    p.add_argument("--raw", action="store_true", help="no chat template")
    p.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> None:
    from mcnc.apps.generate import GenerateSettings, generate

    print(generate(GenerateSettings(
        adapter=args.adapter, prompt=args.prompt, model=args.model,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        seed=args.seed, raw=args.raw)))


def _add_coverage(sub: _Subparsers) -> None:
    """Add ``mcnc coverage`` and its options; it runs :func:`_coverage`."""
    from mcnc.core.generator import GeneratorSpec

    p = _add_command(sub, "coverage", "how evenly the generator covers the sphere")
    spec = GeneratorSpec()
    p.add_argument("--k", type=int, default=spec.k,
                   help="manifold dimension: the generator's inputs")
    p.add_argument("--d", type=int, default=spec.d,
                   help="chunk size: the generator's outputs (the sphere lies in R^d)")
    p.add_argument("--L", type=float, default=spec.L, help="half-width of the cube [-L, L]^k")
    p.add_argument("--width", type=int, default=spec.width,
                   help="hidden width of the generator MLP")
    p.add_argument("--depth", type=int, default=spec.depth,
                   help="hidden (activated) generator layers")
    p.add_argument("--hidden-gain", type=float, default=spec.hidden_gain, help="scale of the "
                   "hidden layers' initialisation relative to SIREN's sqrt(6/width)")
    p.add_argument("--seed", type=int, default=spec.seed,
                   help="seed of the generator and the samples")
    p.add_argument("--samples", type=int, default=4096,
                   help="points drawn from the generator and from the uniform sphere")
    p.add_argument("--projections", type=int, default=256,
                   help="random directions of the sliced Wasserstein estimate")
    p.add_argument("--fit-steps", type=int, default=0,
                   help="also fit the sine generator with sliced Wasserstein for N steps")
    p.add_argument("--figure", default="coverage.png", help="PNG of the k=1, d=3 curves "
                   "('' to skip)")
    p.set_defaults(func=_coverage)


def _coverage(args: argparse.Namespace) -> None:
    from mcnc.apps.coverage import coverage, fit_generator, plot_curves
    from mcnc.apps.machine import machine_line
    from mcnc.core.generator import GeneratorSpec

    print(f"machine: {machine_line()}")
    print(f"sliced Wasserstein distance to U(S^{args.d - 1}) in units of 1/sqrt(d) "
          f"({args.samples} samples, {args.projections} directions); floor = two uniform samples")
    print(f"{'generator':<14} {'SW':>8} {'floor':>8} {'SW/floor':>9}")
    for activation in ("sine", "relu"):
        spec = GeneratorSpec(k=args.k, d=args.d, L=args.L, width=args.width, depth=args.depth,
                             hidden_gain=args.hidden_gain, activation=activation,
                             seed=args.seed)
        phis = [(activation, spec)]
        if args.fit_steps and activation == "sine":
            phis.append(("sine, fitted", fit_generator(spec, steps=args.fit_steps)))
        for label, phi in phis:
            c = coverage(phi, args.samples, args.projections, args.seed)
            print(f"{label:<14} {c.sw:>8.4f} {c.floor:>8.4f} {c.excess:>9.2f}")
    if args.figure:
        plot_curves(args.figure, L=args.L, width=args.width, depth=args.depth,
                    hidden_gain=args.hidden_gain, seed=args.seed)
        print(f"wrote {args.figure} (k=1, d=3: the cube wound around the sphere, sine vs ReLU)")


def _add_bench(sub: _Subparsers) -> None:
    """Add ``mcnc bench`` and its options; it runs :func:`_bench`."""
    p = _add_command(sub, "bench", "reconstruction, training and inference speed and peak "
                     "memory of MCNC against its baselines (results/bench by default)")
    p.add_argument("--quick", action="store_true", help="small stand-ins for every workload "
                   "(seconds; checks the harness, not the speed)")
    p.add_argument("--only", nargs="+", choices=("reconstruction", "training", "inference"),
                   help="run only these sections")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per workload")
    p.add_argument("--no-huge-pages", action="store_true", help="skip the second timing of "
                   "the reconstructions with PyTorch's huge-page allocation")
    p.add_argument("--out", default="results/bench", help="folder for bench.json and bench.md "
                   "('' to write nothing)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> None:
    from mcnc.apps.bench.report import markdown
    from mcnc.apps.bench.run import SECTIONS, BenchSettings, run_bench

    if args.rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {args.rounds}")
    result = run_bench(BenchSettings(quick=args.quick, sections=tuple(args.only or SECTIONS),
                                     rounds=args.rounds, huge_pages=not args.no_huge_pages,
                                     out=args.out or None,
                                     progress=not args.no_progress))
    print(markdown(result))
    if args.out:
        print(f"wrote {Path(args.out) / 'bench.json'} and bench.md")


def _add_train(sub: _Subparsers) -> None:
    """Add ``mcnc train`` and its options; it runs :func:`_train`."""
    from mcnc.apps.methods import METHOD_NAMES, MethodSettings
    from mcnc.core.generator import ACTIVATIONS
    from mcnc.core.manifold import MIXINGS
    from mcnc.models import MODEL_NAMES

    p = _add_command(sub, "train", "train one model with one method and budget (also under "
                     "torchrun --nproc_per_node N -m mcnc train ...)")
    p.add_argument("--model", default="mlp", choices=MODEL_NAMES, help="network to train")
    p.add_argument("--dataset", default="mnist",
                   help="mnist, fashion-mnist, cifar10, cifar100, imagefolder, imagenet100")
    p.add_argument("--data-root", help="directory with the data set's files")
    p.add_argument("--method", default="mcnc", choices=METHOD_NAMES,
                   help="how the weights are compressed; dense: not at all")
    p.add_argument("--budget", type=int, help="trained numbers the method stores for the "
                   "compressed weights (not needed for dense, or mcnc with --d)")
    p.add_argument("--epochs", type=int, default=3, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=128, help="global batch size")
    p.add_argument("--lr", type=float, help="Adam lr of the method's own numbers "
                   "(default: the method's tuned default)")
    p.add_argument("--dense-lr", type=float, default=1e-3,
                   help="Adam lr of dense parameters (normalisation layers, dense method)")
    p.add_argument("--beta-lr-scale", type=float, default=1.0, help="MCNC: beta trains at "
                   "--lr times this (alpha at --lr), times its typical size under --beta-rate "
                   "relative")
    _add_beta_rate(p)
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the run (initialisation, subsets, data order)")
    method = MethodSettings()
    p.add_argument("--k", type=int, default=method.k,
                   help="MCNC manifold dimension: alphas per chunk")
    p.add_argument("--d", type=int, help="MCNC chunk size (default: from --budget)")
    p.add_argument("--L", type=float, default=method.L,
                   help="MCNC cube half-width: alpha lives in [-L, L]^k")
    p.add_argument("--m", type=int, default=method.m,
                   help="MCNC generator outputs summed per chunk")
    p.add_argument("--rank", type=int, help="rank of the factors of mcnc-lowrank and NOLA "
                   f"(default: {method.rank} and {method.nola_rank})")
    p.add_argument("--activation", default=method.activation, choices=ACTIVATIONS,
                   help="activation of MCNC's generator (linear: a control without the "
                   "manifold, a random linear subspace per chunk)")
    p.add_argument("--mixing", default=method.mixing, choices=MIXINGS,
                   help="MCNC: 'hadamard' (the default) spreads every chunk over all weights "
                   "with a seeded randomised Hadamard transform (format version 2 files); "
                   "'none': every chunk makes its own d weights, as in the paper")
    p.add_argument("--max-basis-gb", type=float, default=4.0, help="PRANC/NOLA bases larger "
                   "than this are regenerated block by block instead of kept in memory")
    p.add_argument("--train-subset", type=int, help="train on N samples (seeded subset)")
    p.add_argument("--test-subset", type=int, help="evaluate on N samples (seeded subset)")
    p.add_argument("--augment", action="store_true", help="the paper's training augmentation")
    p.add_argument("--workers", type=int, default=0, help="data loading processes")
    p.add_argument("--bn-batches", type=int, default=20, help="recompute batch-norm "
                   "statistics from N training batches before each evaluation (0: off)")
    p.add_argument("--out", help="directory for checkpoint.safetensors, the model file and "
                   "results.jsonl")
    p.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    p.add_argument("--deterministic", action="store_true", help="only deterministic kernels "
                   "(a GPU run then repeats bit for bit; a CPU run does anyway)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> None:
    from mcnc.apps.classifier_run import TrainSettings, train
    from mcnc.apps.methods import MethodSettings

    ranks = {} if args.rank is None else {"rank": args.rank, "nola_rank": args.rank}
    method = MethodSettings(k=args.k, d=args.d, L=args.L, m=args.m, **ranks,
                            activation=args.activation, mixing=args.mixing,
                            max_basis_bytes=int(args.max_basis_gb * 2**30))
    result = train(TrainSettings(
        model=args.model, dataset=args.dataset, method=args.method, budget=args.budget,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, dense_lr=args.dense_lr,
        beta_lr_scale=args.beta_lr_scale, beta_rate=args.beta_rate, seed=args.seed,
        method_settings=method,
        data_root=args.data_root,
        train_subset=args.train_subset, test_subset=args.test_subset, augment=args.augment,
        out=args.out, resume=args.resume, progress=not args.no_progress,
        workers=args.workers, bn_batches=args.bn_batches, deterministic=args.deterministic))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))


def _add_finetune(sub: _Subparsers) -> None:
    """Add ``mcnc finetune`` and its options; it runs :func:`_finetune`."""
    from mcnc.adapters.config import ADAPTER_MIXINGS, MCNC_ADAPTER_BETA_LR_SCALE
    from mcnc.apps.distributed import DEVICES
    from mcnc.apps.finetune import ADAPTER_METHODS, BASES, DTYPES, FinetuneSettings
    from mcnc.apps.rates import ADAPTER_LR

    run = FinetuneSettings()

    p = _add_command(sub, "finetune", "fine-tune a language model (SmolLM2 or your own) with "
                     "an mcnc or peft adapter on Q/A pairs or your data (also under torchrun)")
    p.add_argument("--model", default=run.model, help="language model to adapt: smollm2-135m, "
                   "tiny-llama (a tiny stand-in for tests), or a local Hugging Face model "
                   "folder (config.json, weights, tokenizer) or .gguf file")
    p.add_argument("--data", help="training examples: a JSON lines, JSON or CSV file with "
                   "chat 'messages', 'question'/'answer', 'prompt'/'completion' or 'text' "
                   "(default: the built-in English Q/A pairs)")
    p.add_argument("--val-data", help="validation examples in the same forms (default: 10%% "
                   "of --data's rows)")
    p.add_argument("--method", default=run.method, choices=ADAPTER_METHODS, help="adapter type")
    p.add_argument("--budget", type=int, default=run.budget, help="trained numbers of MCNC (sets "
                   "the chunk size d) and NOLA (coefficients); LoRA's follow from --rank")
    p.add_argument("--rank", type=int, default=run.rank,
                   help="rank of every adapted layer's update")
    p.add_argument("--peer-rank", type=int, help="Uni-LoRA's rank (default: peft's, 4)")
    p.add_argument("--target-modules", default=run.target_modules, help="'all-linear' or a regex "
                   "of layer names")
    p.add_argument("--steps", type=int, default=run.steps, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=run.batch_size, help="global batch size")
    p.add_argument("--max-length", type=int, default=run.max_length, help="tokens per example")
    p.add_argument("--grad-accumulation", type=int, default=run.grad_accumulation,
                   help="run each process's share of a batch as N micro-batches (same "
                   "gradient, less memory)")
    p.add_argument("--device", default=run.device, choices=DEVICES,
                   help="auto: CUDA when there is one, else the CPU")
    p.add_argument("--dtype", default=run.dtype, choices=list(DTYPES), help="the base model's "
                   "weights (mcnc's adapters and the loss stay float32)")
    p.add_argument("--lr", type=float, help="AdamW lr (default: "
                   + ", ".join(f"{k} {v:g}" for k, v in ADAPTER_LR.items()) + ": the best "
                   "of the sweep at 6,000 trained numbers, 300 steps)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the run")
    p.add_argument("--base", default=run.base, choices=BASES, help="gguf-4bit: keep the GGUF "
                   "file's 4-bit weights for the linear layers (QLoRA-style)")
    p.add_argument("--mixing", choices=ADAPTER_MIXINGS, help="MCNC: 'hadamard' (the "
                   "default) mixes the generated A and B factors with a seeded randomised "
                   "Hadamard transform, so every chunk moves entries of every layer; "
                   "'hadamard-joint' mixes A and B together; 'none' does not mix")
    p.add_argument("--beta-lr-scale", type=float,
                   help="MCNC: beta trains at --lr times this (alpha at --lr), times its "
                   "typical size under --beta-rate relative (default "
                   f"{MCNC_ADAPTER_BETA_LR_SCALE:g})")
    _add_beta_rate(p)
    p.add_argument("--mcnc-option", action="append", type=_key_value, default=[],
                   metavar="KEY=VALUE", help="MCNC: any other MCNCAdapterConfig field, e.g. "
                   "k=8, m=2, depth=2, hidden_gain=8, alpha_init_scale=0.1, a_start=0.5, "
                   "b_start=0.02, freeze_a=true (VALUE read as JSON, else as a string; "
                   "repeat the flag for several; docs/adapters.md lists them)")
    p.add_argument("--nola-in-memory", action="store_true", help="keep NOLA's random bases in "
                   "memory instead of regenerating them every step")
    p.add_argument("--val-batches", type=int, help="evaluate on N validation batches only")
    p.add_argument("--eval-every", type=int, help="also evaluate every N steps (a validation "
                   "curve in the results)")
    p.add_argument("--out", help="directory for the adapter (out/adapter) and results.jsonl")
    p.add_argument("--fsdp", action="store_true", help="under torchrun: shard the base model's "
                   "blocks over the processes (FSDP2); the adapters stay whole")
    p.add_argument("--export-lora", help="also write the adapter as a peft LoRA folder here "
                   "(for LoRA serving stacks)")
    p.add_argument("--checkpoint", help="a file for the run's state, written every "
                   "--checkpoint-every steps; a run started again with the same settings "
                   "continues from it (removed when the run ends)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints "
                   "(default 50)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=_finetune)


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> (key, the JSON value, or the text itself when it is not JSON)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (like k=8), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _finetune(args: argparse.Namespace) -> None:
    from mcnc.apps.finetune import FinetuneSettings, finetune

    result = finetune(FinetuneSettings(
        model=args.model, data=args.data, val_data=args.val_data, method=args.method,
        budget=args.budget, rank=args.rank, peer_rank=args.peer_rank,
        target_modules=args.target_modules, steps=args.steps, batch_size=args.batch_size,
        max_length=args.max_length, grad_accumulation=args.grad_accumulation,
        device=args.device, dtype=args.dtype, lr=args.lr, seed=args.seed, base=args.base,
        mixing=args.mixing, beta_lr_scale=args.beta_lr_scale, beta_rate=args.beta_rate,
        mcnc_options=dict(args.mcnc_option), export_lora=args.export_lora,
        checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every, fsdp=args.fsdp,
        nola_on_the_fly=not args.nola_in_memory,
        val_batches=args.val_batches,
        eval_every=args.eval_every, out=args.out,
        progress=not args.no_progress))
    if int(os.environ.get("RANK", "0")) == 0:
        summary = {k: v for k, v in result.items() if k != "losses"}
        print(json.dumps(summary))


def _add_compare(sub: _Subparsers) -> None:
    """Add ``mcnc compare`` and its options; it runs :func:`_compare`."""
    from mcnc.apps.compare import PRESETS

    p = _add_command(sub, "compare", "a grid of methods x budgets x seeds: markdown table "
                     "and plot")
    p.add_argument("--preset", required=True, choices=list(PRESETS),
                   help="; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()))
    p.add_argument("--out", help="output directory (default mcnc-compare-<preset>); runs "
                   "already in its runs.jsonl are not repeated")
    p.add_argument("--data-root", help="data directory for presets on CIFAR or ImageNet-100")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own "
                   "process with cores/jobs threads (on a CPU, 2 single-threaded runs of a "
                   "small model finish sooner than 1 two-threaded run; on a single GPU keep 1: the "
                   "processes take turns on it)")
    p.add_argument("--where", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="train only the runs whose settings match, e.g. model=lenet5 "
                   "method=mcnc (the table still shows every finished run)")
    p.add_argument("--report-only", action="store_true", help="train nothing: write the "
                   "table and plots from the runs already in runs.jsonl (a partial table)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> None:
    from mcnc.apps.compare import compare

    out = args.out or f"mcnc-compare-{args.preset}"
    given = [a for a in sys.argv[2:] if a != "--report-only"]  # the command that trains
    command = " ".join(["mcnc compare", *given]) if sys.argv[1:2] == ["compare"] \
        else f"mcnc compare --preset {args.preset} --out {out}"
    if args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    where = dict(item.partition("=")[::2] for item in args.where)
    table = compare(args.preset, out, args.data_root, not args.no_progress, command, args.jobs,
                    train=not args.report_only, where=where)
    print(table.read_text())
    print(f"wrote {table}, plot.png, curves.png and runs.jsonl in {table.parent}")


def _add_inspect(sub: _Subparsers) -> None:
    """Add ``mcnc inspect`` and its options; it runs :func:`_inspect`."""
    p = _add_command(sub, "inspect", "print a .mcnc file's metadata and sizes")
    p.add_argument("file", help="the .mcnc file to describe")
    p.add_argument("--json", action="store_true", help="print the raw metadata as JSON")
    p.set_defaults(func=_inspect)


def _print_tensors(tensors: dict, names: list[str]) -> None:
    for name in names:
        t = tensors[name]
        print(f"  {name:<40} {str(t.dtype).removeprefix('torch.'):<9} {list(t.shape)}")
    print(f"stored values: {sum(t.numel() for t in tensors.values()):,}")


def _inspect_adapter(folder: Path, as_json: bool) -> None:
    from mcnc.adapters.files import read_adapter

    config, layout, tensors, raw = read_adapter(folder)
    if as_json:
        print(json.dumps(raw, indent=2))
        return
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    print(f"{folder}: adapter folder, {size:,} bytes; {config.method} adapter of rank "
          f"{config.rank} on {len(layout.targets)} layers (base model: "
          f"{raw.get('base_model_name_or_path') or 'not recorded'})")
    print(f"settings: {json.dumps({k: v for k, v in config.to_dict().items() if k != 'method'})}")
    _print_tensors(tensors, sorted(tensors))


def _inspect(args: argparse.Namespace) -> None:
    from mcnc.core.fileformat import read

    path = Path(args.file)
    if path.is_dir() and (path / "adapter_config.json").exists():
        _inspect_adapter(path, args.json)
        return
    tensors, meta = read(path)
    if args.json:
        print(json.dumps(meta, indent=2))
        return
    size = path.stat().st_size
    if meta.get("method", "mcnc") != "mcnc":
        settings = {k: v for k, v in meta.items() if k not in (
            "layout", "dense", "payload_sha256", "metadata_sha256", "base_sha256")}
        print(f"{path}: {size:,} bytes, {meta['method']} file, format version "
              f"{meta['format_version']}; {json.dumps(settings)}")
        _print_tensors(tensors, list(tensors))
        return
    g, targets = meta["generator"], meta["layout"]["targets"]
    original = sum(math.prod(t["shape"]) for t in targets)
    manifold = tensors["mcnc.alpha"].numel() + tensors["mcnc.beta"].numel()
    print(f"{path}: {size:,} bytes, mcnc format version {meta['format_version']}")
    print(f"mode {meta['mode']}, m={meta['m']}; generator {g['activation']} k={g['k']} "
          f"d={g['d']} L={g['L']:g} width={g['width']} depth={g['depth']} "
          f"gain={g['hidden_gain']:g}, seed {g['seed']} ({g['prng']}"
          f"{', fitted weights stored' if g['fitted'] else ''})")
    if "mixing" in meta:
        print(f"mixing: {meta['mixing']} (every chunk spread over all weights)")
    print(f"{len(targets)} compressed tensors, {original:,} values, generated from {manifold:,} "
          f"alphas and betas ({original / manifold:.1f}x)")
    order = {f"dense.{k}": i for i, k in enumerate(meta["layout"]["state_keys"])}
    _print_tensors(tensors, sorted(tensors, key=lambda n: (not n.startswith("mcnc."),
                                                            order.get(n, 0), n)))


def _add_reconstruct(sub: _Subparsers) -> None:
    """Add ``mcnc reconstruct`` and its options; it runs :func:`_reconstruct`."""
    p = _add_command(sub, "reconstruct", "write the dense state dict as safetensors")
    p.add_argument("file", help="the .mcnc file to expand")
    p.add_argument("-o", "--output", required=True, help="safetensors file to write")
    p.add_argument("--base", help="base weights (safetensors) for a fine-tuning delta file")
    p.set_defaults(func=_reconstruct)


def _reconstruct(args: argparse.Namespace) -> None:
    import safetensors.torch

    from mcnc.core.fileformat import atomic_write, reconstruct

    base = safetensors.torch.load_file(args.base) if args.base else None
    state = reconstruct(args.file, base)
    state = {k: v.contiguous() for k, v in state.items()}
    atomic_write(args.output, safetensors.torch.save(state))
    print(f"wrote {args.output}: {len(state)} tensors, "
          f"{sum(v.numel() for v in state.values()):,} values")


def build_parser() -> argparse.ArgumentParser:
    """The ``mcnc`` parser: ``--version`` and one sub-command per ``_add_*`` function."""
    parser = argparse.ArgumentParser(prog="mcnc", description=__doc__,
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"mcnc {_version()}",
                        help="print mcnc's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_train, _add_compare, _add_finetune, _add_generate,
                _add_coverage, _add_bench, _add_inspect, _add_reconstruct):
        add(sub)
    return parser


FLAG_NAMES = {
    "train": (("root=", "--data-root "),),
    "compare": (("root=", "--data-root "),),
    "reconstruct": (("base_state_dict", "--base"),),
    "finetune": (("mcnc_options", "--mcnc-option"),),
}
"""Per command: how the library's messages name an argument -> the flag the user typed."""


def _in_flags(command: str, message: str) -> str:
    """``message`` with the Python argument names of ``command``'s options replaced by flags."""
    for python_name, flag in FLAG_NAMES.get(command, ()):
        message = message.replace(python_name, flag)
    return message


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FormatError, OSError, DataError, ValueError) as e:
        print(f"mcnc {args.command}: error: {_in_flags(args.command, str(e))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
