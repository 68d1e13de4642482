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
(1.0); here a binary rater marks a voxel where the package's one binarisation rule
(:func:`napari_softseg.labels.masks.binarize`, ``value >= 0.5``) says so (identical for 0/1
masks).

Two engines
-----------
**Patterns** (:func:`staple`). With a global prior the posterior of a voxel depends only on
the *pattern* of rater decisions at that voxel (R raters → at most 2**R patterns). The voxels
are therefore reduced once to a histogram of patterns (one small integer code per voxel) and
EM runs on that histogram, whose cost does not depend on the number of voxels; the posterior
map is one table look-up. No per-rater floating-point copy is made. Multi-class STAPLE
(Warfield et al. 2004, section II-C) uses the same engine with ``K`` labels.

**Voxels** (:func:`soft_staple`). Soft STAPLE lets rater ``j`` give a probability
``d_ij ∈ [0, 1]`` instead of a binary decision, the setting of Kats, Goldberger & Greenspan,
"A Soft STAPLE Algorithm Combined with Anatomical Knowledge", MICCAI 2019 (an expert splits
the vote between the labels). A soft vote counts as the fraction ``d_ij`` of a foreground
decision and ``1 - d_ij`` of a background one, in both EM steps of binary STAPLE:

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
chunked so that sums accumulate in float64. Initialisation, prior and stopping rule are
ITK's, as above. A per-voxel prior ``f_i`` (binary STAPLE with a prior map) uses this engine
with binary ``d``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from napari_softseg.errors import UserError
from napari_softseg.io.checks import check_count, check_positive, check_probability, check_threshold
from napari_softseg.labels.masks import binarize
from napari_softseg.labels.raters import check_raters, check_unit_range, class_labels, label_dtype

#: Largest change of any sensitivity/specificity (confusion entry) that counts as converged.
DEFAULT_TOL = 1e-7
#: Iteration cap (ITK has none; real rater masks converge in < 100 iterations).
DEFAULT_MAX_ITER = 1000
#: Pattern tables up to this many entries are counted with ``np.bincount``.
_BINCOUNT_LIMIT = 1 << 20
_BINCOUNT_CHUNK = 1 << 20
#: Voxels per block of the voxel engine (sums accumulate in float64 block by block).
_CHUNK = 1 << 16
#: Probabilities are clipped to [_EPS, 1 - _EPS] before taking logits.
_EPS = 1e-10
#: Initial sensitivity/specificity when only the other one is given (Warfield et al.).
_INIT_PERFORMANCE = 0.99999


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
        """uint8 consensus: ``binarize(posterior, threshold)`` (binary, ``posterior >= threshold``)
        or the most probable class (multi-class; ties go to the lower label)."""
        if self.n_classes > 2:
            return np.argmax(self.posterior, axis=-1).astype(label_dtype(self.n_classes))
        return binarize(self.posterior, threshold).astype(np.uint8)


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


def _max_change(new: np.ndarray, old: np.ndarray | None) -> float:
    """Largest absolute change (infinite without a previous value); entries undefined (NaN)
    in both count as unchanged."""
    if old is None:
        return np.inf
    new, old = np.asarray(new), np.asarray(old)
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


# --------------------------------------------------------------------------- initial performance


def initial_performance(sensitivity, specificity, n_raters: int):
    """``(p, q)`` per rater from the user's initial values, or None when neither is given
    (the first step is then an M-step from the rater average). A missing one is 0.99999."""
    if sensitivity is None and specificity is None:
        return None
    p = np.broadcast_to(np.asarray(_INIT_PERFORMANCE if sensitivity is None else sensitivity, float), (n_raters,))
    q = np.broadcast_to(np.asarray(_INIT_PERFORMANCE if specificity is None else specificity, float), (n_raters,))
    if np.any((p <= 0) | (p >= 1) | (q <= 0) | (q >= 1)):
        raise UserError("Initial sensitivity and specificity must lie strictly between 0 and 1.")
    return p.copy(), q.copy()


def binary_confusion(p, q) -> np.ndarray:
    """``(R, 2, 2)`` confusion matrices of raters with sensitivity ``p`` and specificity ``q``."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    theta = np.empty((p.size, 2, 2))
    theta[:, 1, 1], theta[:, 0, 1] = p, 1 - p
    theta[:, 0, 0], theta[:, 1, 0] = q, 1 - q
    return theta


# --------------------------------------------------------------------------- patterns: public entry


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
        Same-shape rater maps. Binary/soft maps are binarised with
        :func:`~napari_softseg.labels.masks.binarize` (``value >= threshold``); with
        ``n_classes`` they are integer label maps ``0 .. n_classes-1``.
    prior : None, float or array
        ``None`` (default, as ITK): the global mean of the rater average times
        ``confidence_weight``. A float: a fixed global foreground prior. An array of the
        raters' shape: a per-voxel foreground prior (binary only; voxel engine,
        :func:`soft_staple`). Multi-class: ``None`` or ``K`` class probabilities.
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
    check_positive(tol, "tol")
    check_threshold(threshold, "threshold")
    multiclass = _check_staple_options(arrays, n_classes, max_iter, prior, init_sensitivity, init_specificity)
    if prior is not None and np.ndim(prior) > 0 and np.shape(prior) == arrays[0].shape:  # per-voxel prior
        check_unit_range(arrays, n_classes is not None)
        labels = [binarize(a, threshold) for a in arrays]
        return soft_staple(labels, prior=prior, init_sensitivity=init_sensitivity, init_specificity=init_specificity,
                           tol=tol, max_iter=max_iter, restrict_to_disagreement=restrict_to_disagreement)
    if multiclass:
        K, init = int(n_classes), None
        labels = [class_labels(a, K, j) for j, a in enumerate(arrays, 1)]
    else:
        K = 2
        check_unit_range(arrays, n_classes is not None)
        labels = [binarize(a, threshold) for a in arrays]
        start = initial_performance(init_sensitivity, init_specificity, len(arrays))
        init = None if start is None else binary_confusion(*start)
    patterns, counts, index, rows = pattern_histogram(labels, K)
    del labels
    W, theta, f, iterations, converged = em_patterns(
        patterns, counts, K, prior=prior, confidence_weight=confidence_weight, init_confusion=init,
        tol=tol, max_iter=max_iter, restrict_to_disagreement=restrict_to_disagreement,
    )
    posterior = _posterior_map(W if K > 2 else W[:, 1], rows, index)
    if K == 2:
        sens, spec = binary_statistics(theta)
        return StapleResult(posterior, sens, spec, iterations, float(f[1]), converged, theta, 2)
    sens, spec = one_vs_rest(theta, (W * counts[:, None]).sum(axis=0))
    return StapleResult(posterior, sens, spec, iterations, f, converged, theta, K)


def _check_staple_options(arrays, n_classes, max_iter, prior, init_sensitivity, init_specificity) -> bool:
    """Raise :class:`UserError` for options that do not go together; True for multi-class."""
    if n_classes is not None and int(n_classes) < 2:
        raise UserError(f"n_classes must be at least 2, got {n_classes}.")
    check_count(max_iter, "max_iter")
    if prior is not None and np.ndim(prior) == 0:
        check_probability(prior, "prior")
    multiclass = n_classes is not None and int(n_classes) > 2
    if not multiclass:
        return False
    if prior is not None and np.ndim(prior) > 0 and np.shape(prior) == arrays[0].shape:
        raise UserError("A per-voxel prior is supported for binary STAPLE only.")
    if init_sensitivity is not None or init_specificity is not None:
        raise UserError("Initial sensitivity/specificity apply to binary STAPLE only.")
    return True


def _posterior_map(W: np.ndarray, rows: np.ndarray, index: np.ndarray) -> np.ndarray:
    """float32 posterior of every voxel: ``W`` of its pattern, looked up by pattern index."""
    table = np.zeros((int(rows.max()) + 1 if rows.size else 1,) + W.shape[1:], dtype=np.float32)
    table[rows] = W
    return table[index]


# --------------------------------------------------------------------------- voxels: soft STAPLE


def soft_staple(
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

    Parameters are those of :func:`staple` (binary case). Soft maps must lie in [0, 1].
    ``restrict_to_disagreement`` leaves out voxels where all raters give the same value;
    those keep that value as posterior.
    """
    arrays = check_raters(raters)
    check_unit_range(arrays)
    check_positive(tol, "tol")
    check_count(max_iter, "max_iter")
    if prior is not None and np.ndim(prior) == 0:
        check_probability(prior, "prior")
    shape = arrays[0].shape
    D, active, consensus = _rater_stack(arrays, restrict_to_disagreement)
    M = D.shape[1]
    out = np.empty(M, dtype=np.float32)
    sum_w, dw = _initial_pass(D, out) if M else (0.0, np.zeros(len(arrays)))
    logit_prior, used_prior = _logit_prior(prior, shape, active, sum_w / max(M, 1) * confidence_weight)
    start = initial_performance(init_sensitivity, init_specificity, len(arrays))
    p, q, iterations, converged = _voxel_em(D, out, (sum_w, dw), logit_prior, start, tol, max_iter)
    if active is not None:
        posterior = consensus
        posterior[active] = out
    else:
        posterior = out.reshape(shape)
    theta = binary_confusion(p, q)
    return StapleResult(posterior, np.asarray(p, float), np.asarray(q, float), iterations, used_prior, converged, theta, 2)


def _rater_stack(arrays: list[np.ndarray], restrict_to_disagreement: bool):
    """``(D (R, M) float32, active mask or None, consensus map or None)``: the voxels that take
    part (all, or those where the raters disagree) and the raters' common value elsewhere."""
    if not restrict_to_disagreement:
        D = np.empty((len(arrays), arrays[0].size), dtype=np.float32)
        for j, a in enumerate(arrays):
            D[j] = a.reshape(-1)
        return D, None, None
    lo = np.asarray(arrays[0], dtype=np.float32).copy()
    hi = lo.copy()
    for a in arrays[1:]:
        np.minimum(lo, a, out=lo)
        np.maximum(hi, a, out=hi)
    active = lo != hi
    del hi
    D = np.empty((len(arrays), int(active.sum())), dtype=np.float32)
    for j, a in enumerate(arrays):
        D[j] = a[active]
    return D, active, lo


def _logit_prior(prior, shape, active, estimated: float):
    """``(logit of the prior, the prior as reported)``: a per-voxel map (restricted to the
    active voxels), a fixed global value, or ITK's estimate (``None``)."""
    if prior is not None and np.ndim(prior) > 0:
        prior_map = np.asarray(prior)
        if prior_map.shape != shape:
            raise UserError(f"The per-voxel prior has shape {prior_map.shape} but the raters have {shape}.")
        prior_map = prior_map[active] if active is not None else prior_map.reshape(-1)
        with np.errstate(divide="ignore"):
            pm = np.clip(prior_map.astype(np.float64), 0.0, 1.0)
            logit = np.clip(np.log(pm) - np.log1p(-pm), -80, 80).astype(np.float32)
        return logit, np.asarray(prior, dtype=np.float32)
    used = estimated if prior is None else float(prior)
    g = min(max(float(used), _EPS), 1 - _EPS)
    return np.float32(np.log(g) - np.log1p(-g)), used


def _voxel_em(D, out, sums, logit_prior, start, tol: float, max_iter: int):
    """EM of the voxel engine; ``out`` holds the posterior of the last E-step.

    Returns ``(p, q, iterations, converged)``; NaN performance when there is nothing to
    estimate (no active voxel).
    """
    R, M = D.shape
    sum_w, dw = sums
    sum_d = D.sum(axis=1, dtype=np.float64)
    p, q = start if start is not None else (None, None)
    iterations, converged = 0, False
    for it in range(max_iter if M else 0):
        if start is not None and it == 0:
            new_p, new_q = p, q
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                new_p = dw / sum_w
                new_q = (M - sum_w - sum_d + dw) / (M - sum_w)
        sum_w, dw = _e_pass(D, new_p, new_q, logit_prior, out)
        iterations = it + 1
        if it > 0 and _max_change(new_p, p) <= tol and _max_change(new_q, q) <= tol:
            p, q, converged = new_p, new_q, True
            break
        p, q = new_p, new_q
    if p is None:  # nothing to estimate
        p, q, converged = np.full(R, np.nan), np.full(R, np.nan), True
    return p, q, iterations, converged


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
