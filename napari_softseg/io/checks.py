"""Checks at the package's boundary: one wording for what the CLI and the Python API refuse.

Arrays
    :func:`as_volume` takes numbers only (integers, floats, booleans): complex, object,
    string, byte and date arrays are refused, as are 0-d arrays and arrays with an empty
    axis (a metric of no voxels is no result). :func:`check_finite` refuses NaN/Inf where a
    value is needed (a prediction, a probability map).
Voxel sizes
    :func:`as_spacing` takes three finite, strictly positive sizes in mm.
Settings
    Every command and every public function checks its numeric settings with the same
    functions, named as the caller spells them (``--threshold`` on the command line,
    ``threshold`` in Python):

    * :func:`check_threshold`: a binarisation threshold lies **strictly** between 0 and 1.
      The rule is ``value >= threshold`` (:func:`napari_softseg.labels.masks.binarize`), so
      0 would mark every voxel, background included, and 1 only voxels of certainty 1 (a
      soft map rarely reaches it; values above 1 are impossible).
    * :func:`check_probability`: a prior or fraction strictly between 0 and 1.
    * :func:`check_positive`: a tolerance, a learning rate ... (finite and > 0).
    * :func:`check_count`: a count of iterations, voxels, samples ... (an integer >= minimum).
Memory
    :func:`check_memory` refuses an allocation larger than the memory this machine has
    available, with both figures, before anything is allocated.
"""

from __future__ import annotations

import math
import os
from numbers import Integral, Real
from typing import Sequence

import numpy as np

from napari_softseg.errors import UserError


# ------------------------------------------------------------------ arrays

def as_volume(data, what: str, *, ndim: Sequence[int] | None = None) -> np.ndarray:
    """``data`` as a numeric numpy array with at least one voxel, or a :class:`UserError`
    whose sentence starts with ``what`` (e.g. "The prediction", "Rater 2", "mask.nii.gz").
    ``ndim``: the accepted numbers of dimensions."""
    arr = np.asarray(data)
    if arr.dtype.kind not in "biuf":
        raise UserError(f"{what} has data type {arr.dtype}; expected numbers (integers, floats or booleans).")
    if arr.ndim == 0:
        raise UserError(f"{what} is a single number (a 0-d array); expected an image with voxels.")
    if 0 in arr.shape:
        raise UserError(f"{what} is empty (shape {arr.shape}), so it holds no voxels to work on.")
    if ndim is not None and arr.ndim not in ndim:
        wanted = " or ".join(f"{n}-D" for n in ndim)
        raise UserError(f"{what} is {arr.ndim}-D (shape {arr.shape}); expected {wanted}.")
    return arr


def check_finite(arr: np.ndarray, what: str) -> None:
    """Refuse NaN or infinite values in a float array (integers and booleans always pass)."""
    if arr.dtype.kind != "f":
        return
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise UserError(f"{what} contains {bad} NaN or infinite value{'s' if bad > 1 else ''}.")


def check_unit_interval(arr: np.ndarray, what: str) -> None:
    """Refuse values outside [0, 1] (a mask or probability map is expected)."""
    check_finite(arr, what)
    if arr.dtype == bool:
        return
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if lo < 0.0 or hi > 1.0:
        raise UserError(f"{what} has values from {lo:g} to {hi:g}; expected a mask or probabilities in [0, 1].")


def as_spacing(spacing, what: str = "Spacing") -> tuple[float, float, float]:
    """Three finite voxel sizes > 0 (mm), or a :class:`UserError`."""
    try:
        values = [float(v) for v in np.asarray(spacing, dtype=float).ravel()]
    except (TypeError, ValueError):
        raise UserError(f"{what} must be three voxel sizes in mm, got {spacing!r}.") from None
    if len(values) != 3:
        raise UserError(f"{what} must be three voxel sizes in mm, got {len(values)} value(s).")
    if not all(math.isfinite(v) and v > 0 for v in values):
        shown = ", ".join(f"{v:g}" for v in values)
        raise UserError(f"{what} ({shown}) must hold three finite voxel sizes greater than 0 mm.")
    return values[0], values[1], values[2]


# ------------------------------------------------------------------ settings

def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise UserError(f"{name} must be a number, got {value!r}.")
    return float(value)


def check_threshold(value, name: str = "threshold") -> float:
    """A binarisation threshold strictly between 0 and 1 (see the module docstring)."""
    v = _number(value, name)
    if not 0.0 < v < 1.0:
        raise UserError(f"{name} must lie strictly between 0 and 1, got {value:g}.")
    return v


def check_probability(value, name: str) -> float:
    """A probability or fraction strictly between 0 and 1."""
    v = _number(value, name)
    if not 0.0 < v < 1.0:
        raise UserError(f"{name} must lie strictly between 0 and 1, got {value:g}.")
    return v


def check_positive(value, name: str) -> float:
    """A finite number greater than 0 (a tolerance, a rate)."""
    v = _number(value, name)
    if not (math.isfinite(v) and v > 0):
        raise UserError(f"{name} must be a number greater than 0, got {value:g}.")
    return v


def check_count(value, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer of at least ``minimum`` (and at most ``maximum``)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise UserError(f"{name} must be a whole number, got {value!r}.")
    if value < minimum or (maximum is not None and value > maximum):
        limit = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise UserError(f"{name} must be {limit}, got {value}.")
    return int(value)


# ------------------------------------------------------------------ memory

def _meminfo() -> dict[str, int]:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh if line.split()[1:2]}
    except (OSError, ValueError, IndexError):
        return {}


def memory_figures() -> tuple[int, int]:
    """``(available, total)`` bytes of memory (swap included) of this machine."""
    info = _meminfo()
    if "MemAvailable" in info and "MemTotal" in info:
        swap = info.get("SwapFree", 0)
        return info["MemAvailable"] + swap, info["MemTotal"] + info.get("SwapTotal", 0)
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return int(avail), int(total)
    except (ValueError, OSError, AttributeError):
        return 1 << 62, 1 << 62


def human_bytes(n: float) -> str:
    """``n`` bytes as ``12.3 GiB`` (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} EiB"  # pragma: no cover


def check_memory(nbytes: int, what: str) -> None:
    """Refuse to allocate ``nbytes`` for ``what`` when the machine has less memory available."""
    available, total = memory_figures()
    if nbytes > available:
        raise UserError(
            f"{what} would need {human_bytes(nbytes)} of memory, but this machine has "
            f"{human_bytes(available)} available ({human_bytes(total)} in all), so it was not loaded."
        )
