"""Voxel-wise STAPLE engine for soft rater maps and per-voxel priors ("soft STAPLE").

Soft STAPLE lets rater ``j`` give a probability ``d_ij ∈ [0, 1]`` instead of a binary
decision, the setting of Kats, Goldberger & Greenspan, "A Soft STAPLE Algorithm Combined
with Anatomical Knowledge", MICCAI 2019 (an expert splits the vote between the labels).
The formulation implemented here counts a soft vote as the fraction ``d_ij`` of a
foreground decision and ``1 - d_ij`` of a background one, in both EM steps of binary
STAPLE (Warfield et al. 2004):

* **M-step** (expected counts)::

      p_j = sum_i W_i d_ij / sum_i W_i
      q_j = sum_i (1 - W_i)(1 - d_ij) / sum_i (1 - W_i)

* **E-step** (the rater likelihood interpolated geometrically between the two decisions)::

      a_i = f_i prod_j p_j^d_ij (1 - p_j)^(1 - d_ij)
      b_i = (1 - f_i) prod_j q_j^(1 - d_ij) (1 - q_j)^d_ij
      W_i = a_i / (a_i + b_i)

For binary ``d`` this is exactly STAPLE (checked in the tests against the pattern engine
and SimpleITK). In log-odds the E-step is linear in the raters,
``logit W_i = logit f_i + c + sum_j d_ij w_j`` with ``w_j = logit p_j + logit q_j`` and
``c = sum_j log((1 - p_j) / q_j)``, so one iteration is one pass over a float32
``(R, N)`` stack: a matrix-vector product, a sigmoid and a second product for the M-step,
chunked so that sums accumulate in float64. Initialisation, prior and stopping rule follow
ITK's ``STAPLEImageFilter`` (see :mod:`napari_softseg.fusion.staple`). A per-voxel prior ``f_i``
(binary STAPLE with a prior map) uses the same engine with binary ``d``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from napari_softseg.errors import UserError
from napari_softseg.labels.raters import check_raters, check_unit_range
from napari_softseg.fusion.staple import DEFAULT_MAX_ITER, DEFAULT_TOL, StapleResult

_CHUNK = 1 << 16
_EPS = 1e-10


def dense_staple(
    raters: Sequence[np.ndarray],
    *,
    prior: float | np.ndarray | None = None,
    confidence_weight: float = 1.0,
    init_sensitivity=None,
    init_specificity=None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    restrict_to_disagreement: bool = False,
) -> StapleResult:
    """Binary STAPLE on soft (or binary) rater maps, voxel by voxel; see the module docstring.

    Parameters are those of :func:`napari_softseg.fusion.staple` (binary case). Soft maps
    must lie in [0, 1]. ``restrict_to_disagreement`` leaves out voxels where all raters give
    the same value; those keep that value as posterior.
    """
    arrays = check_raters(raters)
    R = len(arrays)
    shape = arrays[0].shape
    check_unit_range(arrays)
    active = None
    if restrict_to_disagreement:
        lo = np.asarray(arrays[0], dtype=np.float32).copy()
        hi = lo.copy()
        for a in arrays[1:]:
            np.minimum(lo, a, out=lo)
            np.maximum(hi, a, out=hi)
        active = lo != hi
        consensus = lo
        del hi
    M = int(active.sum()) if active is not None else int(np.prod(shape))
    D = np.empty((R, M), dtype=np.float32)
    for j, a in enumerate(arrays):
        D[j] = a[active] if active is not None else a.reshape(-1)

    per_voxel = prior is not None and np.ndim(prior) > 0
    if per_voxel:
        prior_map = np.asarray(prior)
        if prior_map.shape != shape:
            raise UserError(f"The per-voxel prior has shape {prior_map.shape} but the raters have {shape}.")
        prior_map = prior_map[active] if active is not None else prior_map.reshape(-1)
        with np.errstate(divide="ignore"):
            pm = np.clip(prior_map.astype(np.float64), 0.0, 1.0)
            logit_prior = np.clip(np.log(pm) - np.log1p(-pm), -80, 80).astype(np.float32)
    out = np.empty(M, dtype=np.float32)
    sum_d = D.sum(axis=1, dtype=np.float64)
    if M == 0:
        sum_w, dw = 0.0, np.zeros(R)
    else:
        sum_w, dw = _initial_pass(D, out)
    if per_voxel:
        used_prior: float | np.ndarray = np.asarray(prior, dtype=np.float32)
    elif prior is None:
        used_prior = (sum_w / max(M, 1)) * confidence_weight
    else:
        used_prior = float(prior)
    if not per_voxel:
        g = min(max(float(used_prior), _EPS), 1 - _EPS)
        logit_prior = np.float32(np.log(g) - np.log1p(-g))

    p = q = None
    if init_sensitivity is not None or init_specificity is not None:
        p = np.broadcast_to(np.asarray(0.99999 if init_sensitivity is None else init_sensitivity, float), (R,)).copy()
        q = np.broadcast_to(np.asarray(0.99999 if init_specificity is None else init_specificity, float), (R,)).copy()
    start_with_e = p is not None
    iterations, converged = 0, False
    for it in range(max_iter if M else 0):
        if start_with_e and it == 0:
            new_p, new_q = p, q
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                new_p = dw / sum_w
                new_q = (M - sum_w - sum_d + dw) / (M - sum_w)
        sum_w, dw = _e_pass(D, new_p, new_q, logit_prior, out)
        iterations = it + 1
        if it > 0 and _changed(new_p, p) <= tol and _changed(new_q, q) <= tol:
            p, q, converged = new_p, new_q, True
            break
        p, q = new_p, new_q
    if p is None:  # nothing to estimate
        p, q, converged = np.full(R, np.nan), np.full(R, np.nan), True

    if active is not None:
        posterior = consensus
        posterior[active] = out
    else:
        posterior = out.reshape(shape)
    theta = np.empty((R, 2, 2))
    theta[:, 1, 1], theta[:, 0, 1], theta[:, 0, 0], theta[:, 1, 0] = p, 1 - p, q, 1 - q
    return StapleResult(posterior, np.asarray(p, float), np.asarray(q, float), iterations, used_prior, converged, theta, 2)


def _changed(new: np.ndarray, old: np.ndarray | None) -> float:
    if old is None:
        return np.inf
    diff = np.abs(np.asarray(new) - np.asarray(old))
    diff[np.isnan(new) & np.isnan(old)] = 0.0
    return float(np.max(diff)) if not np.any(np.isnan(diff)) else np.inf


def _initial_pass(D: np.ndarray, out: np.ndarray) -> tuple[float, np.ndarray]:
    """W = rater average; returns ``(sum W, D @ W)`` accumulated in float64."""
    R, M = D.shape
    sum_w, dw = 0.0, np.zeros(R)
    for s in range(0, M, _CHUNK):
        block = D[:, s : s + _CHUNK]
        w = out[s : s + _CHUNK]
        np.mean(block, axis=0, out=w)
        sum_w += float(w.sum(dtype=np.float64))
        dw += block @ w
    return sum_w, dw


def _e_pass(D, p, q, logit_prior, out) -> tuple[float, np.ndarray]:
    """E-step into ``out`` and the sufficient statistics of the next M-step."""
    R, M = D.shape
    pc = np.clip(p, _EPS, 1 - _EPS)
    qc = np.clip(q, _EPS, 1 - _EPS)
    weights = (np.log(pc) - np.log1p(-pc) + np.log(qc) - np.log1p(-qc)).astype(np.float32)
    const = np.float32(np.sum(np.log1p(-pc) - np.log(qc)))
    per_voxel = np.ndim(logit_prior) > 0
    sum_w, dw = 0.0, np.zeros(R)
    for s in range(0, M, _CHUNK):
        block = D[:, s : s + _CHUNK]
        z = out[s : s + _CHUNK]
        np.matmul(weights, block, out=z)
        z += const
        z += logit_prior[s : s + _CHUNK] if per_voxel else logit_prior
        np.clip(z, -80.0, 80.0, out=z)
        np.negative(z, out=z)
        np.exp(z, out=z)
        z += 1.0
        np.reciprocal(z, out=z)
        sum_w += float(z.sum(dtype=np.float64))
        dw += block @ z
    return sum_w, dw
