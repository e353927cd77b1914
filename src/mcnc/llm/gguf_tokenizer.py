"""The tokenizer stored in a GGUF file, converted once and then read from a disk cache.

transformers rebuilds a GGUF file's tokenizer from its vocabulary and merges at every load
(several seconds for SmolLM2's 49,152 tokens), while the same tokenizer saved by
``save_pretrained`` loads in a fraction of a second. :func:`load_gguf_tokenizer` therefore
converts a file's tokenizer once, saves it under the cache folder, and loads it from there
in every later process.

The cache folder is ``$MCNC_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/mcnc``, else
``~/.cache/mcnc``; ``MCNC_CACHE_DIR=off`` turns the cache off (every load converts). An entry
is keyed by the GGUF file's resolved path, size and modification time and by the version of
transformers that converted it, so a changed file or another transformers converts anew.
Every load, the first included, returns the tokenizer read back from the saved entry, so a
process that converted and one that read the cache hold the same tokenizer. Entries are
written to a temporary folder and renamed into place (a crash leaves no half entry); an entry
that fails to load is converted again; a cache folder that cannot be written is skipped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["CACHE_ENV", "cache_root", "load_gguf_tokenizer"]

CACHE_ENV = "MCNC_CACHE_DIR"
_log = logging.getLogger(__name__)


def cache_root() -> Path | None:
    """The folder that holds mcnc's caches, or ``None`` when ``MCNC_CACHE_DIR=off``."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen == "off":
        return None
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mcnc"


def _entry_name(gguf: Path) -> str:
    import transformers

    stat = gguf.stat()
    identity = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    return f"{gguf.stem}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def _convert(gguf: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                         local_files_only=True)


def _is_saved(entry: Path) -> bool:
    """Whether ``entry`` holds a saved tokenizer (folders are renamed into place complete)."""
    return (entry / "tokenizer_config.json").is_file()


def _read(entry: Path) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved in ``entry``, or ``None`` if there is none or it does not load."""
    from transformers import AutoTokenizer

    if not _is_saved(entry):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(entry), local_files_only=True)
    except Exception as error:  # whatever the damage, converting again mends it
        _log.warning("cached tokenizer %s does not load (%s); converting again", entry, error)
        return None


def _write(tokenizer: PreTrainedTokenizerBase, entry: Path) -> bool:
    """Save ``tokenizer`` as ``entry`` atomically; ``False`` if the folder is not writable."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    except OSError as error:
        _log.info("tokenizer cache %s is not writable (%s); not caching", entry.parent, error)
        return False
    try:
        tokenizer.save_pretrained(str(staging))
        os.rename(staging, entry)
        return True
    except OSError:  # another process put its entry in place first, or the disk is full
        return _is_saved(entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_gguf_tokenizer(gguf: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer of the GGUF file ``gguf``, from the cache when it holds it.

    Raises whatever transformers raises when the file has no usable tokenizer.
    """
    gguf = Path(gguf)
    root = cache_root()
    if root is None:
        return _convert(gguf)
    entry = root / "tokenizers" / _entry_name(gguf)
    cached = _read(entry)
    if cached is not None:
        return cached
    if entry.exists():  # damaged: make room for a fresh conversion
        shutil.rmtree(entry, ignore_errors=True)
    converted = _convert(gguf)
    if not _write(converted, entry):
        return converted
    return _read(entry) or converted
