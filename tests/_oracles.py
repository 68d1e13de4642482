"""Independent implementations the tests compare the package with (never the package's own
functions): SimpleITK's STAPLE, plain float64 EM, numpy votes and entropies, and a plain
slice-by-slice forward pass of a network."""

from __future__ import annotations

import numpy as np


def itk_staple(raters):
    """SimpleITK's ``STAPLEImageFilter`` on binary raters: (posterior, sensitivity,
    specificity, elapsed iterations)."""
    import SimpleITK as sitk  # a test requirement: missing, the tests that need it fail

    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1.0)
    out = f.Execute([sitk.GetImageFromArray(np.ascontiguousarray(r, dtype=np.uint8)) for r in raters])
    return sitk.GetArrayFromImage(out), np.array(f.GetSensitivity()), np.array(f.GetSpecificity()), f.GetElapsedIterations()


def reference_soft_staple(raters, max_iter=500, tol=1e-10):
    """Plain float64 EM written straight from the documented soft-STAPLE formulas."""
    D = np.stack([np.asarray(r, np.float64).ravel() for r in raters])
    W = D.mean(axis=0)
    g = W.mean()
    for _ in range(max_iter):
        p = (D * W).sum(1) / W.sum()
        q = ((1 - D) * (1 - W)).sum(1) / (1 - W).sum()
        a = g * np.prod(p[:, None] ** D * (1 - p[:, None]) ** (1 - D), axis=0)
        b = (1 - g) * np.prod(q[:, None] ** (1 - D) * (1 - q[:, None]) ** D, axis=0)
        W_new = a / (a + b)
        done = np.max(np.abs(W_new - W)) < tol
        W = W_new
        if done:
            break
    return W.reshape(np.shape(raters[0])), p, q


def majority_vote(raters) -> np.ndarray:
    """More than half of the raters at >= 0.5 (a tie is background), as uint8."""
    votes = np.sum([np.asarray(r, np.float64) >= 0.5 for r in raters], axis=0)
    return (2 * votes > len(raters)).astype(np.uint8)


def binary_entropy_bits(p) -> np.ndarray:
    """-(p log2 p + (1 - p) log2 (1 - p)), 0 at p = 0 and p = 1."""
    p = np.asarray(p, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(p > 0, p * np.log2(p), 0.0) + np.where(p < 1, (1 - p) * np.log2(1 - p), 0.0))
    return np.nan_to_num(h)


def dice_percent(a, b) -> float:
    """2 |A ∩ B| / (|A| + |B|) in %, for masks (non-zero is foreground); 100 when both are empty."""
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    total = int(a.sum()) + int(b.sum())
    return 100.0 if total == 0 else 200.0 * int((a & b).sum()) / total


def plain_network_prediction(model, volume, axis, normalise=True, flip=(), slices=None):
    """numpy z-score over the volume, edge padding to a multiple of 2^depth, the plain fp32
    forward pass slice by slice, crop, NormReLU (each slice divided by its maximum, or for a
    network trained with the batch-wide maximum min(ReLU / m, 1) with its stored m; a sigmoid
    for sigmoid models). With
    ``flip`` (in-plane axes of the slice, 0 and/or 1), the padded slice is flipped before
    the network and its output flipped back: one test-time augmentation view. ``slices``:
    only these indices along ``axis`` (the z-score still uses the whole volume)."""
    import torch

    vol = volume.astype(np.float64)
    vol = vol if vol.ndim == 4 else vol[..., None]
    if normalise:
        vol = (vol - vol.mean(axis=(0, 1, 2))) / vol.std(axis=(0, 1, 2))
    vol = np.moveaxis(vol, axis, 0).astype(np.float32)
    if slices is not None:
        vol = vol[list(slices)]
    m = 2**model.depth
    out = []
    for sl in vol:
        h, w = sl.shape[:2]
        padded = np.pad(sl, ((0, -h % m), (0, -w % m), (0, 0)), mode="edge")
        if flip:
            padded = np.ascontiguousarray(np.flip(padded, tuple(flip)))
        with torch.no_grad():
            logits = model.forward_logits(torch.from_numpy(padded).permute(2, 0, 1)[None])[0, 0]
        if flip:
            logits = torch.flip(logits, tuple(flip))
        logits = logits[:h, :w]
        if getattr(model, "activation_name", "normrelu") == "sigmoid":
            out.append(torch.sigmoid(logits).numpy())
            continue
        r = logits.clamp(min=0).numpy()
        if getattr(getattr(model, "activation", None), "scope", "slice") == "batch":  # the stored normaliser
            out.append(np.minimum(r / float(model.activation.norm_max[0]), 1.0))
            continue
        out.append(r / r.max() if r.max() > 0 else r)
    return np.moveaxis(np.stack(out), 0, axis)


def components(mask):
    """Connected components with the 18-neighbourhood (scipy): (labels, count)."""
    from scipy import ndimage

    return ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 2))
