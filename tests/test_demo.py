"""``napari-softseg demo`` end to end: a headless run writes a screenshot that shows the scan."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def test_headless_demo_writes_screenshot_and_outputs(tmp_path):
    if not os.environ.get("DISPLAY"):
        pytest.fail("GUI tests need a display: run them with 'make test' (Xvfb).")
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "napari_softseg", "demo", "--headless", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(out) in proc.stdout
    from imageio.v3 import imread

    shot = imread(out / "screenshot.png")
    assert shot.shape[0] >= 600 and shot.shape[1] >= 900
    rgb = shot[..., :3].astype(float)
    assert rgb.std() > 20
    summary = json.loads((out / "summary.json").read_text())
    for key, path in summary["outputs"].items():
        assert os.path.exists(path), key
    colour = np.abs(rgb[..., 0] - rgb[..., 2])
    assert (colour > 80).sum() > 100  # the soft overlay (yellow/orange) is on screen
