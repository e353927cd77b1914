"""``mcnc demo``: train an MCNC-compressed classifier on MNIST, offline, in a few minutes.

The network is :func:`mcnc.models.small_cnn` (~825k weights). Every convolution and linear
layer is generated from alphas and betas (k=16, d=2000: about 115x fewer trainable
parameters); batch-norm layers stay dense. The run writes ``demo.mcnc``, a PNG of test accuracy
per epoch and ``demo.json`` with every printed number.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mcnc import models
from mcnc.apps.loop import EpochResult, predict, train_classifier
from mcnc.apps.machine import machine_info, machine_line
from mcnc.apps.rates import DEMO_LR
from mcnc.compress import MCNCModel, compress
from mcnc.core.config import MCNCConfig
from mcnc.core.fileformat import STORAGE_DTYPES, load, save
from mcnc.core.summary import summarize
from mcnc.data.mnist import mnist_tensors


@dataclass
class DemoSettings:
    epochs: int = 4
    lr: float = DEMO_LR
    """Adam learning rate of alpha (raw scale, in [-L, L]) and beta; cosine decay."""
    dense_lr: float = 1e-3
    """Learning rate of the dense batch-norm parameters."""
    batch_size: int = 128
    k: int = MCNCConfig.k
    d: int = 2000
    seed: int = 0
    limit: int | None = None
    """Use only the first ``limit`` training images (for quick checks)."""
    out: str = "mcnc-demo"
    progress: bool = True
    dense_baseline: bool = True
    """Also train the uncompressed network (Adam, ``dense_lr``, same epochs) for comparison."""


def plot_history(curves: dict[str, list[EpochResult]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, history in curves.items():
        ax.plot([r.epoch for r in history], [100 * r.test_accuracy for r in history],
                marker="o", label=label)
    ax.legend()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _print_epoch(r: EpochResult) -> None:
    print(f"epoch {r.epoch}: train loss {r.train_loss:.4f}, test accuracy "
          f"{100 * r.test_accuracy:.2f}% ({r.seconds:.0f} s)")


def storage_report(model: MCNCModel, out: Path, test: tuple[torch.Tensor, torch.Tensor]
                   ) -> dict[str, dict]:
    """Save with alphas and betas in each storage dtype, reload each file into a fresh
    network and measure it: bytes, test accuracy, predictions that differ from float32."""
    report, reference = {}, None
    for dtype in STORAGE_DTYPES:
        name = str(dtype).removeprefix("torch.")
        path = save(model, out / ("demo.mcnc" if dtype == torch.float32 else f"demo-{name}.mcnc"),
                    dtype)
        preds = predict(load(path, models.small_cnn()), test[0])
        reference = preds if reference is None else reference
        report[name] = {"path": str(path), "bytes": path.stat().st_size,
                        "test_accuracy": (preds == test[1]).float().mean().item(),
                        "predictions_differing_from_float32": int((preds != reference).sum())}
    return report


def print_report(result: dict, table: str) -> None:
    print(f"\n{table}\n")
    print(f"dense parameters      {result['original_params']:>10,}")
    print(f"trainable parameters  {result['trainable_params']:>10,}   "
          f"({result['param_ratio']:.1f}x fewer)")
    print(f"bytes on disk         {result['dense_bytes']:>10,} -> {result['file_bytes']:,}   "
          f"({result['byte_ratio']:.1f}x smaller)")
    dense = result["dense_test_accuracy"]
    print(f"test accuracy         {100 * result['test_accuracy']:>9.2f}%"
          + (f"   (uncompressed network, same epochs: {100 * dense:.2f}%)" if dense else ""))
    print(f"training time         {result['train_seconds']:>9.0f} s"
          + (f"   (uncompressed: {result['dense_train_seconds']:.0f} s)" if dense else ""))
    print("reloaded from file (alphas and betas stored as):")
    for name, s in result["storage"].items():
        print(f"  {name:<9} {s['bytes']:>8,} bytes  test accuracy {100 * s['test_accuracy']:.2f}%"
              f"  ({s['predictions_differing_from_float32']} of {result['test_images']:,} "
              f"predictions differ from float32)  {s['path']}")


def run_demo(settings: DemoSettings) -> dict:
    """Train, report, save, reload; returns the numbers it printed (also in demo.json)."""
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = mnist_tensors("train"), mnist_tensors("test")
    if settings.limit:
        train = (train[0][: settings.limit], train[1][: settings.limit])
    torch.manual_seed(settings.seed)
    config = MCNCConfig(k=settings.k, d=settings.d, seed=settings.seed)
    model = compress(models.small_cnn(), config)
    print(f"machine: {machine_line()}")
    print(f"MNIST: {len(train[0]):,} training and {len(test[0]):,} test images; "
          f"model: small_cnn compressed with k={config.k}, d={config.d}, L={config.L:g}")
    run = (settings.epochs, settings.lr, settings.dense_lr, settings.batch_size, settings.seed,
           settings.progress)
    start = time.perf_counter()
    history = train_classifier(model, train, test, *run, on_epoch=_print_epoch)
    seconds = time.perf_counter() - start
    summary = summarize(model)
    curves = {f"MCNC ({summary.trainable_params:,} trainable)": history}
    dense_accuracy = dense_seconds = None
    if settings.dense_baseline:
        print("training the uncompressed network for comparison (Adam, lr "
              f"{settings.dense_lr:g})")
        torch.manual_seed(settings.seed)
        dense_run = (settings.epochs, settings.dense_lr, *run[2:])
        curves[f"dense ({summary.original_params:,})"] = dense = train_classifier(
            models.small_cnn(), train, test, *dense_run)
        dense_accuracy = dense[-1].test_accuracy
        dense_seconds = sum(r.seconds for r in dense)
    result = {
        "settings": asdict(settings), "machine": machine_info(),
        "original_params": summary.original_params,
        "trainable_params": summary.trainable_params, "param_ratio": summary.param_ratio,
        "dense_bytes": summary.dense_bytes, "file_bytes": summary.file_bytes,
        "byte_ratio": summary.byte_ratio, "test_accuracy": history[-1].test_accuracy,
        "dense_test_accuracy": dense_accuracy, "train_seconds": seconds,
        "dense_train_seconds": dense_seconds,
        "test_images": len(test[0]),
        "storage": storage_report(model, out, test),
        "history": [asdict(r) for r in history],
    }
    plot_history(curves, out / "demo_accuracy.png",
                 f"MNIST, small_cnn: MCNC ({summary.param_ratio:.0f}x fewer trainable) vs dense")
    (out / "demo.json").write_text(json.dumps(result, indent=2))
    print_report(result, summary.table())
    print(f"wrote {out / 'demo_accuracy.png'} and {out / 'demo.json'}")
    return result
