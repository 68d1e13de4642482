#!/usr/bin/env python
"""Check a brain gray-matter model on a T1 scan it was not trained on.

Usage (from the repository root)::

    .venv/bin/python scripts/check_brain_gm.py                       # the shipped brain-gm on BraTS t1n
    .venv/bin/python scripts/check_brain_gm.py OTHER_T1.nii.gz --seg TUMOUR.nii.gz --model my.pt

A T1 from another subject has no FAST map to compare with, so the check is a plausibility
measure: (i) the gray-matter fraction of the brain (outside a tumour, if a segmentation is
given) and (ii) the soft Dice against a FAST-like reference built from the scan alone, a
three-class Gaussian mixture of the brain intensities (posterior of the middle class, no
spatial prior, no bias correction). The same reference built on the training scan is
compared with FAST for scale. A figure (scan, prediction, reference on three axial slices)
is written with ``--figure``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _round(d: dict, n: int = 4) -> dict:
    return {k: (round(float(v), n) if isinstance(v, (float, np.floating)) else v) for k, v in d.items()}


def brain_volumes():
    """The brain T1 with the two artificial spheres masked out, its GM map and brain mask."""
    from scipy import ndimage

    from napari_softseg.io.nifti import read_nifti
    from napari_softseg.io.samples import sample_path

    t1 = read_nifti(sample_path("brain_t1", "bet.nii.gz"))
    gm = read_nifti(sample_path("brain_t1", "pve_1.nii.gz"))
    lab, _ = ndimage.label(t1.data > 0)
    brain = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    image = np.where(brain, t1.data, 0).astype(np.float32)
    label = np.clip(np.where(brain, gm.data, 0), 0, 1).astype(np.float32)
    return t1, image, label, brain




def gmm_gm_posterior(values: np.ndarray, iterations: int = 60) -> tuple[np.ndarray, dict]:
    """Three-class 1-D Gaussian mixture (CSF < GM < WM on T1) fitted by EM; returns the
    gray-matter posterior of every value and the fitted parameters.

    Initialisation: means at the 10th, 45th and 80th percentiles, equal weights, common
    variance. This is a FAST-like reference without spatial prior or bias correction.
    """
    x = values.astype(np.float64)
    mu = np.percentile(x, [10, 45, 80])
    var = np.full(3, x.var() / 9)
    w = np.full(3, 1 / 3)
    for _ in range(iterations):
        logp = -0.5 * (x[:, None] - mu) ** 2 / var - 0.5 * np.log(2 * np.pi * var) + np.log(w)
        logp -= logp.max(axis=1, keepdims=True)
        r = np.exp(logp)
        r /= r.sum(axis=1, keepdims=True)
        nk = r.sum(axis=0)
        w, mu = nk / x.size, (r * x[:, None]).sum(axis=0) / nk
        var = (r * (x[:, None] - mu) ** 2).sum(axis=0) / nk
    order = np.argsort(mu)
    return r[:, order[1]].astype(np.float32), {"means": mu[order].round(2).tolist(), "weights": w[order].round(3).tolist()}


def check_gm_other_t1(model, path: Path, seg_path: Path | None, figure: Path | None) -> dict:
    """Plausibility of ``model`` on another T1 (see the module docstring)."""
    from scipy import ndimage

    from napari_softseg.engine.predict import predict_volume
    from napari_softseg.metrics.segmentation import soft_dice
    from napari_softseg.io.nifti import read_nifti

    vol = read_nifti(path)
    image = vol.data.astype(np.float32)
    t0 = time.perf_counter()
    soft = predict_volume(model, image, spacing=vol.spacing)
    seconds = time.perf_counter() - t0
    brain = image > 0
    brain = ndimage.binary_erosion(brain, iterations=1)
    if seg_path is not None and seg_path.exists():
        tumour = ndimage.binary_dilation(read_nifti(seg_path).data > 0, iterations=3)
        region = brain & ~tumour
    else:
        region = brain
    ref = np.zeros_like(soft)
    ref[region], params = gmm_gm_posterior(image[region])
    # scale: the same reference built on the training scan, against FAST
    _, timg, tlab, tbrain = brain_volumes()
    tref = np.zeros_like(tlab)
    tref[tbrain], _ = gmm_gm_posterior(timg[tbrain])
    result = _round({
        "file": str(path.name),
        "orientation": "".join(__import__("nibabel").aff2axcodes(vol.affine)),
        "shape": "x".join(map(str, vol.data.shape)),
        "predict_seconds": seconds,
        "gm_fraction_of_brain_pred": float(soft[region].sum() / region.sum()),
        "gm_fraction_of_brain_gmm_reference": float(ref[region].sum() / region.sum()),
        "soft_dice_vs_gmm_reference_%": soft_dice(soft[region], ref[region]),
        "training_scan_soft_dice_gmm_reference_vs_fast_%": soft_dice(tref[tbrain], tlab[tbrain]),
        "prediction_max": float(soft.max()),
        "prediction_outside_brain_mean": float(soft[~(image > 0)].mean()),
    }, 4)
    result["gmm"] = params
    if figure is not None:
        _figure(image, soft, ref, vol, figure, result)
    return result


def _figure(image, soft, ref, vol, path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zs = [int(image.shape[2] * f) for f in (0.4, 0.55, 0.7)]
    fig, axes = plt.subplots(3, 3, figsize=(10, 10.5))
    for col, z in enumerate(zs):
        sl = image[:, :, z].T
        axes[0, col].imshow(sl, cmap="gray", origin="lower")
        axes[0, col].set_title(f"{vol.name} axial {z}")
        axes[1, col].imshow(sl, cmap="gray", origin="lower")
        axes[1, col].imshow(np.ma.masked_less(soft[:, :, z].T, 0.02), cmap="magma", vmin=0, vmax=1, origin="lower", alpha=0.8)
        axes[1, col].set_title("brain-gm soft prediction")
        axes[2, col].imshow(ref[:, :, z].T, cmap="magma", vmin=0, vmax=1, origin="lower")
        axes[2, col].set_title("GMM reference (tumour excluded)")
    for a in axes.ravel():
        a.set_axis_off()
    fig.suptitle(f"brain-gm on an unseen T1 ({result['orientation']}, {result['shape']}): GM fraction "
                 f"{result['gm_fraction_of_brain_pred']:.2f} (reference {result['gm_fraction_of_brain_gmm_reference']:.2f}), "
                 f"soft Dice vs reference {result['soft_dice_vs_gmm_reference_%']:.1f} %", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=60)
    plt.close(fig)




def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("t1", nargs="?", default=str(REPO.parent / "shared" / "data" / "brats_case" / "t1n.nii.gz"))
    p.add_argument("--seg", default=None, help="tumour segmentation to exclude (default: segmentation.nii.gz beside the T1)")
    p.add_argument("--model", default="brain-gm", help="model name or checkpoint (default: brain-gm)")
    p.add_argument("--figure", default=None, help="PNG to write")
    args = p.parse_args(argv)
    from napari_softseg.engine.predict import load_model

    t1 = Path(args.t1)
    seg = Path(args.seg) if args.seg else t1.parent / "segmentation.nii.gz"
    result = check_gm_other_t1(load_model(args.model), t1, seg, Path(args.figure) if args.figure else None)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
