"""STAPLE speed and agreement: napari_softseg vs SimpleITK's ``STAPLEImageFilter``.

Input: 7 raters on a 160x160x164 grid (4.2 M voxels) cropped from the real ISBI 2015 lesion
masks in ``../shared/data/isbi2015_raters`` (patient 1, both experts) plus five
deterministic perturbations of them (dilation, erosion, boundary noise, dropped and added
lesions, a one-voxel shift). Both implementations run with ITK's defaults on the same
arrays; we report the time ratio ours / SimpleITK (best of several runs each, in one
process), the voxel agreement of the posteriors at 0.5, the largest sensitivity and
specificity differences, iteration counts and our peak extra memory (tracemalloc).

    python -m benchmarks.bench_staple [--quick] [--out DIR]
"""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FULL_CROP = (160, 160, 164)
QUICK_CROP = (64, 64, 64)


def _data_dir() -> Path:
    import os

    env = os.environ.get("NAPARI_SOFTSEG_SHARED_DATA")
    roots = ([Path(env)] if env else []) + [REPO.parent / "shared" / "data", REPO / "shared" / "data"]
    for root in roots:
        if (root / "isbi2015_raters").is_dir():
            return root / "isbi2015_raters"
    raise FileNotFoundError("isbi2015_raters not found in ../shared/data (set NAPARI_SOFTSEG_SHARED_DATA)")


def make_raters(crop=FULL_CROP, n_raters: int = 7, seed: int = 0) -> list[np.ndarray]:
    """Two real expert masks plus synthetic perturbations, cropped around the centre."""
    from scipy import ndimage

    from napari_softseg.io.nifti import read_nifti

    d = _data_dir()
    r1 = read_nifti(d / "training01_rater1.nii.gz").data > 0
    r2 = read_nifti(d / "training01_rater2.nii.gz").data > 0
    # centre the crop on the lesions so that a small crop still holds some
    com = np.array(ndimage.center_of_mass(r1 | r2)).round().astype(int)
    start = [int(np.clip(c - s // 2, 0, n - s)) for c, s, n in zip(com, crop, r1.shape)]
    box = tuple(slice(a, a + s) for a, s in zip(start, crop))
    r1, r2 = r1[box], r2[box]
    rng = np.random.default_rng(seed)
    ball = ndimage.generate_binary_structure(3, 1)
    edge = r1 ^ ndimage.binary_erosion(r1, ball)
    noisy = r1 ^ (edge & (rng.random(r1.shape) < 0.3))
    lab, n = ndimage.label(r2)
    dropped = r2 & ~np.isin(lab, rng.choice(np.arange(1, n + 1), size=max(1, n // 5), replace=False))
    blobs = np.zeros_like(r1)
    for c in rng.integers(8, np.array(crop) - 8, size=(6, 3)):
        blobs[tuple(slice(int(x) - 2, int(x) + 2) for x in c)] = True
    candidates = [
        r1, r2,
        ndimage.binary_dilation(r1, ball),
        ndimage.binary_erosion(r2, ball) | (r1 & r2),
        noisy,
        dropped | blobs,
        np.roll(r1 | r2, 1, axis=0),
    ]
    return [c.astype(np.uint8) for c in candidates[:n_raters]]


def _time(fn, repeats: int) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(quick: bool = False, out_dir: Path = Path("benchmarks/results")) -> dict:
    import SimpleITK as sitk

    from napari_softseg.fusion.staple import soft_staple, staple

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    crop = QUICK_CROP if quick else FULL_CROP
    raters = make_raters(crop, 3 if quick else 7)
    images = [sitk.GetImageFromArray(r) for r in raters]

    def run_itk():
        f = sitk.STAPLEImageFilter()
        f.SetForegroundValue(1.0)
        out = f.Execute(images)
        return f, out

    t_itk, (itk_filter, itk_img) = _time(run_itk, 1 if quick else 2)
    itk_post = sitk.GetArrayFromImage(itk_img)
    t_ours, ours = _time(lambda: staple(raters), 3 if quick else 5)
    t_soft, soft = _time(lambda: soft_staple(raters), 1)
    tracemalloc.start()
    staple(raters)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    n_vox = int(raters[0].size)
    agree = float(np.mean((itk_post > 0.5) == (ours.posterior > 0.5)))
    result = {
        "raters": len(raters), "shape": list(raters[0].shape), "voxels": n_vox,
        "simpleitk_s": t_itk, "ours_s": t_ours, "ratio_ours_over_simpleitk": t_ours / t_itk,
        "soft_staple_s": t_soft, "ratio_soft_staple_over_simpleitk": t_soft / t_itk,
        "agreement_at_0.5": agree,
        "max_abs_posterior_diff": float(np.max(np.abs(itk_post - ours.posterior))),
        "max_sensitivity_diff": float(np.max(np.abs(np.array(itk_filter.GetSensitivity()) - ours.sensitivity))),
        "max_specificity_diff": float(np.max(np.abs(np.array(itk_filter.GetSpecificity()) - ours.specificity))),
        "soft_staple_max_sensitivity_diff": float(np.max(np.abs(np.array(itk_filter.GetSensitivity()) - soft.sensitivity))),
        "iterations_ours": ours.iterations, "iterations_simpleitk_plus_1": int(itk_filter.GetElapsedIterations()) + 1,
        "ours_peak_memory_mib": peak / 2**20,
        "one_float64_copy_per_rater_mib": 8 * n_vox * len(raters) / 2**20,
        "output_dtype": str(ours.posterior.dtype),
        "quick": quick,
    }
    (out_dir / "staple.json").write_text(json.dumps(result, indent=2))
    md = [
        "## STAPLE: napari_softseg vs SimpleITK",
        "",
        f"{len(raters)} raters x {n_vox / 1e6:.1f} M voxels ({'x'.join(map(str, raters[0].shape))}), real ISBI 2015 masks"
        " plus perturbations; best of several runs in one process (2 shared cores, timings noisy).",
        "",
        "| | time (s) | ratio to SimpleITK |",
        "|---|---:|---:|",
        f"| SimpleITK STAPLEImageFilter | {t_itk:.3f} | 1 |",
        f"| napari_softseg `staple` | {t_ours:.3f} | {t_ours / t_itk:.3f} |",
        f"| napari_softseg `soft_staple` (voxel-wise engine) | {t_soft:.3f} | {t_soft / t_itk:.3f} |",
        "",
        f"Agreement at 0.5: {100 * agree:.4f} % of voxels; max |posterior difference| {result['max_abs_posterior_diff']:.2e};"
        f" max |sensitivity difference| {result['max_sensitivity_diff']:.2e}, specificity {result['max_specificity_diff']:.2e};"
        f" iterations {ours.iterations} (SimpleITK {result['iterations_simpleitk_plus_1']}).",
        f"Peak extra memory of ours: {peak / 2**20:.1f} MiB (one float64 copy per rater would be"
        f" {result['one_float64_copy_per_rater_mib']:.0f} MiB); output {result['output_dtype']}.",
        "",
    ]
    (out_dir / "staple.md").write_text("\n".join(md))
    return result


if __name__ == "__main__":
    from benchmarks.run_all import bench_cli

    raise SystemExit(bench_cli(__doc__, run, "staple"))
