"""Confidence levels: levels <-> soft maps, the rater colormap and the volumes of a rater.

A rater paints integers into a napari ``Labels`` layer; each integer is a **confidence
level**. With ``n`` levels (default :data:`N_LEVELS` = 10) level ``k`` means the soft value
``k / n`` (0.1 ... 1.0) and 0 is background::

    soft = levels / n                 levels = floor(clip(soft, 0, 1) * n + 1/2)

Rounding to the nearest level loses at most ``1 / (2 n)`` (0.05 for ten levels); the exact
loss of a given map is reported by :func:`mask_to_levels`. :func:`levels_to_soft` and
:func:`soft_to_levels` are the only conversions in the package.

Volumes
-------
The **soft volume** of a map is ``sum(soft) · voxel volume`` (:func:`soft_volume`, used by
the metrics and the docks alike); the **hard volume** counts the voxels that the one
binarisation rule (:func:`napari_softseg.labels.masks.binarize`, ``soft >= threshold``)
keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_softseg.errors import UserError
from napari_softseg.io.checks import as_volume
from napari_softseg.io.nifti import clip_soft
from napari_softseg.labels.masks import DEFAULT_THRESHOLD, binarize

#: Number of confidence levels; level k is the soft value k / N_LEVELS.
N_LEVELS = 10

# Colours follow the soft-map overlay of the reader (dark violet -> orange -> light
# yellow, monotonic lightness) so painted raters and fused soft maps read the same way;
# opacity grows linearly from 0.35 (level 1) to 1.0 (level 10).
_LEVEL_RGB = (
    (0.310, 0.062, 0.475),
    (0.470, 0.088, 0.525),
    (0.610, 0.130, 0.510),
    (0.730, 0.190, 0.430),
    (0.850, 0.250, 0.350),
    (0.902, 0.370, 0.270),
    (0.954, 0.490, 0.190),
    (0.984, 0.630, 0.190),
    (0.992, 0.790, 0.270),
    (1.000, 0.950, 0.350),
)
_ALPHA_MIN = 0.35


def level_colors(n_levels: int = N_LEVELS) -> dict[int | None, tuple[float, float, float, float]]:
    """RGBA for every level: ``{None: transparent, 0: transparent, 1: ..., n: ...}``.

    Colour and opacity both grow with confidence. ``None`` is the colour of values
    outside ``0..n`` (napari's ``DirectLabelColormap`` default key).
    """
    if n_levels < 1:
        raise UserError(f"The number of confidence levels must be at least 1, got {n_levels}.")
    rgb = np.asarray(_LEVEL_RGB, dtype=float)
    xs = np.linspace(0.0, 1.0, len(rgb))
    colors: dict[int | None, tuple[float, float, float, float]] = {
        None: (0.0, 0.0, 0.0, 0.0),
        0: (0.0, 0.0, 0.0, 0.0),
    }
    for k in range(1, n_levels + 1):
        t = (k - 1) / (n_levels - 1) if n_levels > 1 else 1.0
        r, g, b = (float(np.interp(t, xs, rgb[:, i])) for i in range(3))
        alpha = _ALPHA_MIN + (1.0 - _ALPHA_MIN) * t
        colors[k] = (r, g, b, round(alpha, 4))
    return colors


def levels_to_soft(levels: np.ndarray, n_levels: int = N_LEVELS) -> np.ndarray:
    """Float32 soft map ``levels / n_levels`` (values above ``n_levels`` clip to 1)."""
    levels = np.asarray(levels)
    out = np.minimum(levels, n_levels).astype(np.float32)
    out /= np.float32(n_levels)
    return out


@dataclass(frozen=True)
class Quantized:
    """Result of turning a mask into confidence levels.

    Attributes
    ----------
    levels : numpy.ndarray
        uint8 levels ``0..n_levels``.
    max_error : float
        ``max |clip(v, 0, 1) - level / n|`` over all voxels (0 for binary masks).
    n_clipped : int
        Voxels whose value lay outside [0, 1] (interpolated masks overshoot) and were clipped.
    kind : str
        ``"binary"`` or ``"soft"``.
    clip_change : float
        The largest change the clipping made (0 when nothing was clipped).
    """

    levels: np.ndarray
    max_error: float
    n_clipped: int
    kind: str
    clip_change: float = 0.0


def soft_to_levels(soft: np.ndarray, n_levels: int = N_LEVELS) -> Quantized:
    """Nearest-level rounding of a soft map; see the module formula."""
    soft = np.asarray(soft, dtype=np.float64)
    n_clipped = int(np.count_nonzero((soft > 1.0) | (soft < 0.0)))
    clipped = np.clip(soft, 0.0, 1.0)
    levels = np.floor(clipped * n_levels + 0.5).astype(np.uint8)
    err = float(np.max(np.abs(clipped - levels / n_levels))) if soft.size else 0.0
    return Quantized(levels=levels, max_error=err, n_clipped=n_clipped, kind="soft")


def mask_to_levels(data: np.ndarray, n_levels: int = N_LEVELS, *, name: str = "mask") -> Quantized:
    """Confidence levels from a binary or soft rater mask.

    Binary masks (bool, or integers in {0, 1}) become ``0`` / ``n_levels``. Float masks
    follow the one rule for soft maps (:func:`napari_softseg.io.nifti.clip_soft`): values
    at most :data:`~napari_softseg.io.nifti.SOFT_OVERSHOOT` outside [0, 1] (from
    interpolation) are clipped, and the largest change is reported in ``clip_change``; then
    they are rounded to the nearest level. Integer maps with other values (multi-class
    label maps), other data types, 0-d or empty arrays raise :class:`UserError` naming ``name``.
    """
    data = as_volume(data, name)
    if data.dtype == bool:
        return Quantized(np.where(data, n_levels, 0).astype(np.uint8), 0.0, 0, "binary")
    if np.issubdtype(data.dtype, np.integer):
        values = np.unique(data)
        if np.all(np.isin(values, (0, 1))):
            return Quantized((data != 0).astype(np.uint8) * np.uint8(n_levels), 0.0, 0, "binary")
        shown = ", ".join(str(int(v)) for v in values[:6]) + (" ..." if values.size > 6 else "")
        raise UserError(
            f"{name} holds integer labels {{{shown}}}, not a rater mask: expected a binary "
            "(0/1) or soft (0-1 float) mask."
        )
    clipped, change = clip_soft(data, name)
    q = soft_to_levels(data, n_levels)
    kind = "binary" if np.all(np.isin(np.unique(clipped), (0.0, 1.0))) else "soft"
    return Quantized(q.levels, q.max_error, q.n_clipped, kind, change)


def soft_volume(soft, voxel_volume: float) -> float:
    """Partial-volume volume ``sum(soft) · voxel_volume`` (mm³ when the voxel volume is in mm³),
    summed in float64."""
    return float(np.sum(soft, dtype=np.float64)) * float(voxel_volume)


def levels_soft_volume(levels: np.ndarray, voxel_volume: float, n_levels: int = N_LEVELS) -> float:
    """:func:`soft_volume` of :func:`levels_to_soft` ``(levels)``, without a float copy."""
    return soft_volume(np.minimum(levels, n_levels), float(voxel_volume) / n_levels)


def levels_hard_volume(levels: np.ndarray, voxel_volume: float, n_levels: int = N_LEVELS,
                       threshold: float = DEFAULT_THRESHOLD) -> float:
    """Volume of the voxels whose confidence is at least ``threshold`` (level 0 never counts).

    Compared as levels: ``level / n >= threshold`` is ``level >= ceil(threshold · n)``.
    """
    k = int(np.ceil(threshold * n_levels - 1e-9))
    return int(np.count_nonzero(binarize(np.asarray(levels), max(k, 1)))) * float(voxel_volume)
