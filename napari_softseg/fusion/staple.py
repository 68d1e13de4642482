"""STAPLE: simultaneous truth and performance level estimation (binary, multi-class, soft).

STAPLE (Warfield, Zou & Wells, IEEE TMI 23(7):903-921, 2004) treats the true segmentation
``T`` as hidden and each rater ``j`` as a noisy observer with a confusion matrix
``theta_j[l, s] = P(rater j says l | T = s)`` (binary: sensitivity ``p_j = theta_j[1, 1]``
and specificity ``q_j = theta_j[0, 0]``). Expectation-maximisation alternates

* **M-step** (performance from the current posterior ``W_i(s) = P(T_i = s | D)``)::

      theta_j[l, s] = sum_{i: D_ij = l} W_i(s) / sum_i W_i(s)

* **E-step** (posterior from the performance and the prior ``f(s)``)::

      W_i(s) ∝ f(s) · prod_j theta_j[D_ij, s]

Defaults reproduce ITK's ``STAPLEImageFilter`` (``itkSTAPLEImageFilter.hxx``, used by
SimpleITK): the posterior starts as the **rater average** (fraction of raters that mark the
voxel), the prior is the **global mean of that average** times a confidence weight (1.0),
the first step is an M-step, and iteration stops when every sensitivity and specificity
changes by at most ``tol = 1e-7`` (ITK: squared change <= 1e-14). ITK's output is the
posterior of the last E-step, and so is ours. ITK reports ``ElapsedIterations`` as the
0-based index of the last iteration; ``iterations`` here counts EM iterations done, i.e.
ITK's value + 1. ITK counts a voxel as foreground when it equals the foreground value
(1.0); here a binary rater marks a voxel when its value is ``> 0.5`` (identical for 0/1
masks).

Speed. With a global prior the posterior of a voxel depends only on the *pattern* of rater
decisions at that voxel (R raters → at most 2**R patterns). The voxels are therefore reduced
once to a histogram of patterns (one small integer code per voxel) and EM runs on that
histogram, whose cost does not depend on the number of voxels; the posterior map is one
table look-up. No per-rater floating-point copy is made. A per-voxel prior or soft rater
maps use the dense engine in :mod:`napari_softseg.fusion.soft_staple`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from napari_softseg.errors import UserError
from napari_softseg.labels.raters import check_raters, check_unit_range, class_labels, foreground, label_dtype

#: Largest change of any sensitivity/specificity (confusion entry) that counts as converged.
DEFAULT_TOL = 1e-7
#: Iteration cap (ITK has none; real rater masks converge in < 100 iterations).
DEFAULT_MAX_ITER = 1000
#: Pattern tables up to this many entries are counted with ``np.bincount``.
_BINCOUNT_LIMIT = 1 << 20
_BINCOUNT_CHUNK = 1 << 20


@dataclass
class StapleResult:
    """What STAPLE estimates.

    Attributes
    ----------
    posterior : numpy.ndarray
        float32 ``P(T = 1 | D)`` with the raters' shape (binary), or ``(*shape, K)`` class
        posteriors (multi-class, classes on the last axis as in 4-D NIfTI files).
    sensitivity, specificity : numpy.ndarray
        Binary: ``(R,)`` per rater. Multi-class: ``(R, K)``, per rater and class
        (one-vs-rest; sensitivity = ``theta_j[s, s]``).
    iterations : int
        EM iterations performed (ITK's ``ElapsedIterations`` + 1).
    prior : float, numpy.ndarray
        Binary: the foreground prior used (float) or the per-voxel prior map. Multi-class:
        ``(K,)`` class priors.
    converged : bool
        Whether ``tol`` was reached before ``max_iter``.
    confusion : numpy.ndarray
        ``(R, K, K)`` with ``confusion[j, l, s] = P(rater j says l | truth s)``.
    """

    posterior: np.ndarray
    sensitivity: np.ndarray
    specificity: np.ndarray
    iterations: int
    prior: float | np.ndarray
    converged: bool
    confusion: np.ndarray | None = None
    n_classes: int = 2

    def hard(self, threshold: float = 0.5) -> np.ndarray:
        """uint8 consensus: ``posterior > threshold`` (binary) or the most probable class
        (multi-class; ties go to the lower label)."""
        if self.n_classes > 2:
            return np.argmax(self.posterior, axis=-1).astype(label_dtype(self.n_classes))
        return (self.posterior > np.float32(threshold)).astype(np.uint8)


# --------------------------------------------------------------------------- patterns


def _uint_for(n: int) -> type:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n <= np.iinfo(dtype).max:
            return dtype
    return np.uint64


def pattern_histogram(labels: Sequence[np.ndarray], n_classes: int):
    """Reduce voxels to rater-decision patterns.

    Returns ``(pattern_labels (P, R) int64, counts (P,) float64, index, table_rows)``:
    the posterior of voxel ``v`` is ``table[index[v]]`` where ``table[table_rows] = W``.
    """
    n_raters = len(labels)
    shape = labels[0].shape
    total = n_classes ** n_raters
    if total <= _BINCOUNT_LIMIT:
        dtype = _uint_for(total - 1)
        code = np.zeros(shape, dtype=dtype)
        mult = 1
        for lab in labels:
            lab = lab.view(np.uint8) if lab.dtype == bool else lab
            if mult == 1:
                code[...] = lab
            else:
                code += lab.astype(dtype, copy=False) * dtype(mult)
            mult *= n_classes
        flat = code.reshape(-1)
        counts = np.zeros(total, dtype=np.int64)
        for s in range(0, flat.size, _BINCOUNT_CHUNK):  # chunks: no full-size int64 temporary
            counts += np.bincount(flat[s : s + _BINCOUNT_CHUNK], minlength=total)
        present = np.flatnonzero(counts)
        digits = (present[:, None] // (n_classes ** np.arange(n_raters, dtype=np.int64))) % n_classes
        return digits.astype(np.int64), counts[present].astype(np.float64), code, present
    # Large pattern spaces: uint64 codes, compressed with np.unique before they overflow.
    base = None  # (P0, r0) labels of the compressed prefix
    code = np.zeros(shape, dtype=np.uint64).ravel()
    pending = 0
    limit = (1 << 62) // n_classes
    for j, lab in enumerate(labels):
        if pending and n_classes ** (pending + 1) > limit:
            code, base = _compress(code, base, pending, n_classes)
            pending = 0
        lab = (lab.view(np.uint8) if lab.dtype == bool else lab).ravel()
        code *= np.uint64(n_classes)
        code += lab.astype(np.uint64)
        pending += 1
    code, base = _compress(code, base, pending, n_classes)
    counts = np.bincount(code).astype(np.float64)
    return base, counts, code.reshape(shape), np.arange(base.shape[0])


def _compress(code: np.ndarray, base, pending: int, n_classes: int):
    """Replace codes by pattern indices; ``code = base_index * K**pending + digits``."""
    uniq, inverse = np.unique(code, return_inverse=True)
    scale = np.uint64(n_classes ** pending)
    prefix = (uniq // scale).astype(np.int64)
    rest = uniq % scale
    powers = np.uint64(n_classes) ** np.arange(pending - 1, -1, -1, dtype=np.uint64)
    digits = ((rest[:, None] // powers) % np.uint64(n_classes)).astype(np.int64)
    labels = digits if base is None else np.concatenate([base[prefix], digits], axis=1)
    return inverse.astype(np.int64).ravel(), labels


# --------------------------------------------------------------------------- EM on patterns


def em_patterns(
    pattern_labels: np.ndarray,
    counts: np.ndarray,
    n_classes: int,
    *,
    prior=None,
    confidence_weight: float = 1.0,
    init_confusion: np.ndarray | None = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    restrict_to_disagreement: bool = False,
):
    """Run STAPLE's EM on a pattern histogram (see module docstring).

    Returns ``(W (P, K), confusion (R, K, K), prior (K,), iterations, converged)``.
    Consensus patterns (all raters agree) are fixed to their label and left out of the
    estimation when ``restrict_to_disagreement``.
    """
    P, R = pattern_labels.shape
    K = n_classes
    onehot = np.zeros((P, R, K))
    np.put_along_axis(onehot, pattern_labels[:, :, None], 1.0, axis=2)
    vote = onehot.mean(axis=1)  # (P, K): fraction of raters choosing each class
    active = np.ones(P, dtype=bool)
    if restrict_to_disagreement:
        active = ~np.all(pattern_labels == pattern_labels[:, :1], axis=1)
    weights = np.where(active, counts, 0.0)
    n_active = weights.sum()
    if prior is None:
        f = (vote * weights[:, None]).sum(axis=0) / max(n_active, 1.0)
        if K == 2:  # ITK: g_t = mean(W) * ConfidenceWeight
            f = np.array([1.0 - f[1] * confidence_weight, f[1] * confidence_weight])
    else:
        f = np.atleast_1d(np.asarray(prior, dtype=np.float64))
        if K == 2 and f.size == 1:
            f = np.array([1.0 - f[0], f[0]])
        if f.shape != (K,) or np.any(f < 0) or not np.isclose(f.sum(), 1.0):
            raise UserError(f"The STAPLE prior must be a probability (binary) or {K} class probabilities summing to 1.")
    with np.errstate(divide="ignore"):
        log_f = np.log(f)

    W = vote.copy()
    if n_active == 0:  # raters agree everywhere: nothing to estimate
        theta = _m_step(onehot, W, counts)
        return W, theta, f, 0, True
    theta = None if init_confusion is None else np.asarray(init_confusion, dtype=np.float64)
    iterations, converged = 0, False
    for it in range(max_iter):
        if theta is None or it > 0:
            new_theta = _m_step(onehot, W, weights)
        else:  # user-given initial performance: start with an E-step
            new_theta = theta
        W = _e_step(new_theta, pattern_labels, log_f, vote, active, W)
        iterations = it + 1
        if it > 0 and _max_change(new_theta, theta) <= tol:
            theta = new_theta
            converged = True
            break
        theta = new_theta
    return W, theta, f, iterations, converged


def _max_change(new: np.ndarray, old: np.ndarray) -> float:
    """Largest absolute change; entries undefined (NaN) in both count as unchanged."""
    diff = np.abs(new - old)
    diff[np.isnan(new) & np.isnan(old)] = 0.0
    return float(np.max(diff, initial=0.0)) if not np.any(np.isnan(diff)) else np.inf


def _m_step(onehot: np.ndarray, W: np.ndarray, weights: np.ndarray) -> np.ndarray:
    nW = W * weights[:, None]  # (P, K)
    num = np.einsum("prl,ps->rls", onehot, nW)  # (R, K, K)
    den = nW.sum(axis=0)  # (K,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den[None, None, :]


def _e_step(theta, pattern_labels, log_f, vote, active, W_prev) -> np.ndarray:
    R = pattern_labels.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_theta = np.log(theta)  # (R, K, K)
        log_w = log_f[None, :] + log_theta[np.arange(R)[None, :], pattern_labels].sum(axis=1)  # (P, K)
        log_w[np.isnan(log_w)] = -np.inf  # a class without any posterior mass is impossible
        top = np.max(log_w, axis=1, keepdims=True)
        w = np.exp(log_w - top)
        w /= w.sum(axis=1, keepdims=True)
    bad = ~np.all(np.isfinite(w), axis=1)
    if np.any(bad):  # every class impossible (0/0 in ITK): keep the previous estimate
        w[bad] = W_prev[bad]
    w[~active] = vote[~active]
    return w


def binary_statistics(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity ``theta[j, 1, 1]`` and specificity ``theta[j, 0, 0]`` per rater."""
    return theta[:, 1, 1].copy(), theta[:, 0, 0].copy()


def one_vs_rest(theta: np.ndarray, class_mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per rater and class: sensitivity ``theta[s, s]`` and specificity
    ``sum_{t != s} m_t (1 - theta[s, t]) / sum_{t != s} m_t`` with posterior class masses ``m``."""
    R, K, _ = theta.shape
    sens = np.stack([theta[:, s, s] for s in range(K)], axis=1)
    spec = np.empty((R, K))
    for s in range(K):
        others = [t for t in range(K) if t != s]
        m = class_mass[others]
        with np.errstate(invalid="ignore", divide="ignore"):
            spec[:, s] = ((1.0 - theta[:, s, others]) * m).sum(axis=1) / m.sum()
    return sens, spec


# --------------------------------------------------------------------------- public entry


def staple(
    raters: Sequence[np.ndarray],
    *,
    prior: float | np.ndarray | None = None,
    confidence_weight: float = 1.0,
    init_sensitivity: float | Sequence[float] | None = None,
    init_specificity: float | Sequence[float] | None = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    restrict_to_disagreement: bool = False,
    n_classes: int | None = None,
    threshold: float = 0.5,
) -> StapleResult:
    """STAPLE label fusion of binary (or multi-class) rater maps.

    Parameters
    ----------
    raters : sequence of arrays
        Same-shape rater maps. Binary/soft maps are binarised with ``value > threshold``;
        with ``n_classes`` they are integer label maps ``0 .. n_classes-1``.
    prior : None, float or array
        ``None`` (default, as ITK): the global mean of the rater average times
        ``confidence_weight``. A float: a fixed global foreground prior. An array of the
        raters' shape: a per-voxel foreground prior (binary only; dense engine). Multi-class:
        ``None`` or ``K`` class probabilities.
    confidence_weight : float
        ITK's ``ConfidenceWeight`` scaling of the estimated prior (binary only).
    init_sensitivity, init_specificity : None, float or per-rater sequence
        ``None`` (default, as ITK): no initial values; the first M-step uses the rater
        average. Otherwise EM starts with an E-step from these values (Warfield et al.
        suggest values close to 1, e.g. 0.99999). Binary only.
    tol : float
        Convergence when no sensitivity/specificity (confusion entry) changes by more.
    max_iter : int
        Iteration cap.
    restrict_to_disagreement : bool
        Estimate only from voxels where raters disagree; consensus voxels keep their
        unanimous label and do not enter the prior or the performance estimates.
    n_classes : int, optional
        Multi-class STAPLE with this many labels (Warfield et al. 2004, section II-C).
    threshold : float
        Binarisation of binary/soft rater maps.
    """
    arrays = check_raters(raters)
    R = len(arrays)
    multiclass = n_classes is not None and int(n_classes) > 2
    if n_classes is not None and int(n_classes) < 2:
        raise UserError(f"n_classes must be at least 2, got {n_classes}.")
    if max_iter < 1:
        raise UserError(f"max_iter must be at least 1, got {max_iter}.")
    if prior is not None and np.ndim(prior) > 0 and np.shape(prior) == arrays[0].shape:
        if multiclass:
            raise UserError("A per-voxel prior is supported for binary STAPLE only.")
        from napari_softseg.fusion.soft_staple import dense_staple

        check_unit_range(arrays, n_classes is not None)
        labels = [foreground(a, threshold) for a in arrays]
        return dense_staple(labels, prior=prior, init_sensitivity=init_sensitivity, init_specificity=init_specificity,
                            tol=tol, max_iter=max_iter, restrict_to_disagreement=restrict_to_disagreement)
    if multiclass:
        K = int(n_classes)
        if init_sensitivity is not None or init_specificity is not None:
            raise UserError("Initial sensitivity/specificity apply to binary STAPLE only.")
        labels = [class_labels(a, K, j) for j, a in enumerate(arrays, 1)]
        init = None
    else:
        K = 2
        check_unit_range(arrays, n_classes is not None)
        labels = [foreground(a, threshold) for a in arrays]
        init = _initial_confusion(init_sensitivity, init_specificity, R)
    patterns, counts, index, rows = pattern_histogram(labels, K)
    del labels
    W, theta, f, iterations, converged = em_patterns(
        patterns, counts, K, prior=prior, confidence_weight=confidence_weight, init_confusion=init,
        tol=tol, max_iter=max_iter, restrict_to_disagreement=restrict_to_disagreement,
    )
    if K == 2:
        table = np.zeros(int(rows.max()) + 1 if rows.size else 1, dtype=np.float32)
        table[rows] = W[:, 1]
        posterior = table[index]
        sens, spec = binary_statistics(theta)
        return StapleResult(posterior, sens, spec, iterations, float(f[1]), converged, theta, 2)
    table = np.zeros((int(rows.max()) + 1, K), dtype=np.float32)
    table[rows] = W
    posterior = table[index]
    mass = (W * counts[:, None]).sum(axis=0)
    sens, spec = one_vs_rest(theta, mass)
    return StapleResult(posterior, sens, spec, iterations, f, converged, theta, K)


def _initial_confusion(sens, spec, R: int):
    if sens is None and spec is None:
        return None
    p = np.broadcast_to(np.asarray(0.99999 if sens is None else sens, dtype=np.float64), (R,))
    q = np.broadcast_to(np.asarray(0.99999 if spec is None else spec, dtype=np.float64), (R,))
    if np.any((p <= 0) | (p >= 1) | (q <= 0) | (q >= 1)):
        raise UserError("Initial sensitivity and specificity must lie strictly between 0 and 1.")
    theta = np.empty((R, 2, 2))
    theta[:, 1, 1], theta[:, 0, 1] = p, 1 - p
    theta[:, 0, 0], theta[:, 1, 0] = q, 1 - q
    return theta
