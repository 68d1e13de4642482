"""``napari-softseg demo`` end to end: a headless run segments the phantom with the shipped
lesion model, selects a flagged lesion and writes a screenshot plus the outputs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def test_headless_demo_segments_and_writes_outputs(tmp_path):
    if not os.environ.get("DISPLAY"):
        pytest.fail("GUI tests need a display: run them with 'make test' (Xvfb).")
    out = tmp_path / "demo"
    env = dict(os.environ, NAPARI_SOFTSEG_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "napari_softseg", "demo", "--headless", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(out) in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    for key, path in summary["outputs"].items():
        assert os.path.exists(path), key
    assert {"prediction_soft", "prediction_mask", "review_csv", "review_json", "review_soft", "review_binary",
            "screenshot"} <= set(summary["outputs"])
    assert summary["model"]["name"] == "ms-lesion"
    assert {"phantom_flair soft", "phantom_flair mask", "phantom_flair entropy"} <= set(summary["layers"])

    # the Segment found lesions, and the selected one is flagged when any is
    with open(summary["outputs"]["review_csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == summary["n_lesions"] + summary["n_candidates"] and summary["n_lesions"] > 0
    flagged = [int(r["id"]) for r in rows if r["flagged"] == "True"]
    lesions = [r for r in rows if r["kind"] == "lesion"]
    assert 0 < summary["n_flagged"] < len(lesions) / 2  # a minority of the lesions is flagged ...
    assert summary["selected_reason"].startswith("flag score")  # ... for a reason in words
    if flagged:
        assert summary["selected_lesion"] == min(flagged)  # the first flagged lesion in the table (by id)
        row = next(r for r in rows if int(r["id"]) == summary["selected_lesion"])
        assert summary["slice_shown"] == round(float(row["centroid_k"]))  # the viewer moved there

    # outputs carry the phantom's geometry; the binary mask is the soft map above the threshold
    from napari_softseg.io.nifti import read_nifti
    from napari_softseg.io.phantom import phantom_files

    source = read_nifti(phantom_files(tmp_path / "cache")["image"])
    soft = read_nifti(summary["outputs"]["prediction_soft"])
    mask = read_nifti(summary["outputs"]["prediction_mask"])
    for vol in (soft, mask):
        np.testing.assert_allclose(vol.affine, source.affine, atol=1e-6)
    np.testing.assert_array_equal(mask.data > 0, soft.data > np.float32(summary["threshold"]))
    assert summary["detection_vs_truth"]["ltpr_%"] >= 50.0

    # the screenshot shows the viewer with the soft overlay and the dock's table
    from imageio.v3 import imread

    shot = imread(out / "screenshot.png")
    assert shot.shape[0] >= 600 and shot.shape[1] >= 900
    rgb = shot[..., :3].astype(float)
    assert rgb.std() > 20
    warm = (rgb[..., 0] > 150) & (rgb[..., 0] - rgb[..., 2] > 80)  # orange / yellow of the soft colormap
    assert warm.sum() > 30
    amber = (np.abs(rgb[..., 0] - 140) < 60) & (np.abs(rgb[..., 1] - 110) < 50) & (rgb[..., 2] < 90)
    assert amber[:, shot.shape[1] // 2:].sum() > 200 or not flagged  # flagged rows of the lesion table
