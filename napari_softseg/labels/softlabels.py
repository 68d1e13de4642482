"""Confidence levels <-> soft maps, the rater colormap, soft-edge coverage and volumes.

A rater paints integers into a napari ``Labels`` layer; each integer is a **confidence
level**. With ``n`` levels (default :data:`N_LEVELS` = 10) level ``k`` means the soft value
``k / n`` (0.1 ... 1.0) and 0 is background::

    soft = levels / n                 levels = floor(clip(soft, 0, 1) * n + 1/2)

Rounding to the nearest level loses at most ``1 / (2 n)`` (0.05 for ten levels); the exact
loss of a given map is reported by :func:`mask_to_levels`.

Soft edge
---------
A brush stroke paints, in napari, every voxel whose centre lies within the brush radius of
one of the stroke's (rounded) positions. With the soft edge on, each voxel the stroke
changed is then given the partial-volume value

.. math:: v = \\lfloor c \\, L + (1 - c) \\, v_0 + 1/2 \\rfloor

where ``L`` is the level painted, ``v_0`` the voxel's level before the stroke and ``c``
the fraction of the voxel's area (volume for a 3-D brush) covered by the brush disc of
diameter ``brush_size`` swept along the stroke's exact path (:func:`brush_coverage`).
Inner voxels (``c = 1``) keep ``L``; a border voxel half covered by the disc gets halfway
between its old value and ``L``; the eraser (``L = 0``) leaves a fractional rim. Voxels
outside what napari painted are never touched, so the stroke never grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_softseg.errors import UserError

#: Number of confidence levels; level k is the soft value k / N_LEVELS.
N_LEVELS = 10
#: A voxel counts in the hard volume when its confidence is at least this.
HARD_THRESHOLD = 0.5

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


def level_value(level: int, n_levels: int = N_LEVELS) -> float:
    """Soft value of one level (``level / n_levels``)."""
    return float(level) / float(n_levels)


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
        Voxels whose value exceeded 1 (interpolated masks overshoot) and were clipped.
    kind : str
        ``"binary"`` or ``"soft"``.
    """

    levels: np.ndarray
    max_error: float
    n_clipped: int
    kind: str


def soft_to_levels(soft: np.ndarray, n_levels: int = N_LEVELS) -> Quantized:
    """Nearest-level rounding of a soft map; see the module formula."""
    soft = np.asarray(soft, dtype=np.float64)
    n_clipped = int(np.count_nonzero(soft > 1.0))
    clipped = np.clip(soft, 0.0, 1.0)
    levels = np.floor(clipped * n_levels + 0.5).astype(np.uint8)
    err = float(np.max(np.abs(clipped - levels / n_levels))) if soft.size else 0.0
    return Quantized(levels=levels, max_error=err, n_clipped=n_clipped, kind="soft")


def mask_to_levels(data: np.ndarray, n_levels: int = N_LEVELS, *, name: str = "mask",
                   tolerance: float = 0.1) -> Quantized:
    """Confidence levels from a binary or soft rater mask.

    Binary masks (bool, or integers in {0, 1}) become ``0`` / ``n_levels``. Float masks
    must lie in ``[0, 1 + tolerance]`` (slight overshoot from interpolation is clipped)
    and are rounded to the nearest level. Integer maps with other values (multi-class
    label maps), negative or larger values raise :class:`UserError` naming ``name``.
    """
    data = np.asarray(data)
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
    if not np.issubdtype(data.dtype, np.floating):
        raise UserError(f"{name} has data type {data.dtype}; expected a binary or soft (0-1 float) mask.")
    if not np.all(np.isfinite(data)):
        raise UserError(f"{name} contains NaN or infinite values.")
    lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0 + tolerance:
        raise UserError(
            f"{name} has values from {lo:.3g} to {hi:.3g}; a soft rater mask must lie in [0, 1]."
        )
    q = soft_to_levels(data, n_levels)
    kind = "binary" if np.all(np.isin(np.unique(data), (0.0, 1.0))) else "soft"
    return Quantized(q.levels, q.max_error, q.n_clipped, kind)


# ---------------------------------------------------------------------------- volumes
def soft_volume(levels: np.ndarray, voxel_volume: float, n_levels: int = N_LEVELS) -> float:
    """Σ confidence × voxel volume (mm³ when the voxel volume is in mm³)."""
    levels = np.asarray(levels)
    total = int(np.minimum(levels, n_levels).sum(dtype=np.uint64)) if levels.size else 0
    return total / n_levels * float(voxel_volume)


def hard_volume(levels: np.ndarray, voxel_volume: float, n_levels: int = N_LEVELS,
                threshold: float = HARD_THRESHOLD) -> float:
    """Volume of the voxels whose confidence is at least ``threshold``."""
    k = int(np.ceil(threshold * n_levels - 1e-9))
    return int(np.count_nonzero(np.asarray(levels) >= max(k, 1))) * float(voxel_volume)


# ---------------------------------------------------------------------------- soft edge
def sweep_path(points: np.ndarray, step: float = 0.25) -> np.ndarray:
    """Densify a polyline so consecutive points are at most ``step`` apart.

    The union of discs centred on the result approximates the disc swept along the
    path; the scalloping between two centres is ``step² / (8 r)`` deep.
    """
    pts = np.atleast_2d(np.asarray(points, dtype=float))
    if len(pts) < 2:
        return pts
    out = [pts[:1]]
    for a, b in zip(pts[:-1], pts[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        t = np.linspace(0.0, 1.0, n + 1)[1:, None]
        out.append(a + t * (b - a))
    return np.concatenate(out)


def brush_coverage(voxels: np.ndarray, centres: np.ndarray, radius: float,
                   samples_per_voxel: int = 64) -> np.ndarray:
    """Fraction of each voxel covered by the union of balls of ``radius`` around ``centres``.

    Parameters
    ----------
    voxels : (N, d) int array
        Voxel indices; voxel ``i`` spans ``[i - 1/2, i + 1/2]`` along each axis.
    centres : (M, d) float array
        Ball centres in the same index units (discs for d = 2, spheres for d = 3).
    radius : float
        In voxels (napari's brush diameter is ``brush_size``, so ``radius = size / 2``).
    samples_per_voxel : int
        Sub-voxel samples (8 x 8 in 2-D, 4 x 4 x 4 in 3-D by default).

    Returns
    -------
    (N,) float array in [0, 1]. Voxels whose whole square lies inside (outside) the
    union get exactly 1 (0); only the border band is sampled.
    """
    from scipy.spatial import cKDTree

    voxels = np.atleast_2d(np.asarray(voxels, dtype=float))
    centres = np.atleast_2d(np.asarray(centres, dtype=float))
    n, d = voxels.shape
    cov = np.zeros(n, dtype=float)
    if n == 0 or len(centres) == 0 or radius <= 0:
        return cov
    tree = cKDTree(centres)
    nearest, _ = tree.query(voxels, k=1)
    half_diag = 0.5 * np.sqrt(d)
    inside = nearest + half_diag <= radius
    cov[inside] = 1.0
    band = ~inside & (nearest - half_diag <= radius)
    if np.any(band):
        s = max(1, int(round(samples_per_voxel ** (1.0 / d))))
        offs_1d = (np.arange(s) + 0.5) / s - 0.5
        offs = np.stack(np.meshgrid(*([offs_1d] * d), indexing="ij"), axis=-1).reshape(-1, d)
        pts = (voxels[band][:, None, :] + offs[None, :, :]).reshape(-1, d)
        dist, _ = tree.query(pts, k=1, distance_upper_bound=radius + 1e-9)
        hit = np.isfinite(dist).reshape(-1, len(offs))
        cov[band] = hit.mean(axis=1)
    return cov


def soft_edge_values(old: np.ndarray, level: int, coverage: np.ndarray,
                     n_levels: int = N_LEVELS) -> np.ndarray:
    """Partial-volume level ``floor(c L + (1 - c) v0 + 1/2)`` for painted voxels (uint8)."""
    old = np.minimum(np.asarray(old, dtype=float), n_levels)
    c = np.clip(np.asarray(coverage, dtype=float), 0.0, 1.0)
    new = np.floor(c * float(level) + (1.0 - c) * old + 0.5)
    return np.clip(new, 0, n_levels).astype(np.uint8)
