"""What a configuration or a file may ask for, and the checks that enforce it.

Files may come from anyone, so every reader (``.mcnc`` files, adapter folders) and every
settings class checks values with the helpers here: integers are JSON integers (never
booleans) within a range, floating-point tensors are finite, and no file may describe more
weights or ask for more regeneration work than the limits below (``docs/format.md``, section 9).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mcnc.core.errors import FormatError

MAX_SEED = 2**64 - 1
"""Seeds are Philox keys: two 32-bit words."""
MAX_K = 4096
"""Most alpha coordinates per chunk."""
MAX_D = 1 << 20
"""Largest chunk."""
MAX_WIDTH = 8192
"""Widest hidden layer of a generator."""
MAX_DEPTH = 16
"""Most hidden layers of a generator."""
MAX_GENERATOR_WEIGHTS = 1 << 24
"""Most numbers all of a generator's tensors may hold together (64 MiB of float32): the
per-field limits alone would allow a 32 GB output layer."""
MAX_NUMBERS = 1 << 36
"""Most weights a file may describe (its layout's parameters, or MCNC's padded chunks):
256 GiB of float32, far above any model mcnc compresses, far below what breaks arithmetic."""
MAX_ADAPTER_FACTOR_NUMBERS = 1 << 31
"""Most factor entries an adapter folder may describe (8 GB of float32)."""
MAX_WORK = 1 << 36
"""Most random numbers (PRANC, NOLA: coefficients x weights of the streamed bases) or
multiply-adds (MCNC: chunks x m x generator weights) a file may need to be regenerated; a
file asking for more is refused as corrupt or hostile instead of running for hours."""
VALUE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
                RuntimeError, MemoryError)
"""What a bad value in a file can make Python or torch raise (RecursionError is a
RuntimeError); readers turn these into :class:`FormatError`."""
FINITE_CHECKED_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def is_int(value: object, low: int = 0, high: int | None = None) -> bool:
    """``value`` is an integer (Python or numpy, not a boolean) in ``[low, high]``
    (``high=None``: no upper bound)."""
    return (isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)
            and value >= low and (high is None or value <= high))


def is_number(value: object, low: float = -math.inf, high: float = math.inf) -> bool:
    """``value`` is a finite real number (not a boolean) strictly between ``low`` and
    ``high``."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and low < value < high)


def check_positive_ints(**values: object) -> None:
    """Raise a ValueError naming the first value that is not a positive integer."""
    for name, value in values.items():
        if not is_int(value, 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_seed(seed: object, what: str = "seed") -> None:
    """Raise a ValueError unless ``seed`` is an integer in ``[0, 2**64)``."""
    if not is_int(seed, 0, MAX_SEED):
        raise ValueError(f"{what} must be an integer in [0, 2**64), got {seed!r}")


def check_work(work: int, what: str) -> None:
    """Refuse a file whose regeneration needs more than ``MAX_WORK`` operations; ``what``
    says what is counted ("random numbers", "multiply-adds")."""
    if work > MAX_WORK:
        raise FormatError(f"regenerating it takes {work:,} {what}, more than the {MAX_WORK:,} "
                          "a file may ask for; the file is corrupt or hostile")


def check_finite(name: str, t: torch.Tensor) -> None:
    """Floating-point and complex tensors may hold no NaN or infinity (FormatError)."""
    if t.is_floating_point() and t.dtype not in FINITE_CHECKED_DTYPES:
        t = t.double()  # float8 types: isfinite is not implemented for them everywhere
    if (t.is_floating_point() or t.is_complex()) and not torch.isfinite(t).all():
        raise FormatError(f"tensor {name!r} holds NaN or infinite values")
