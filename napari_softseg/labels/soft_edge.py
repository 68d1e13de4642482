"""Soft edge of a brush stroke: the fraction of each voxel the brush covers.

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

import numpy as np

from napari_softseg.labels.levels import N_LEVELS


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
