"""Helper process for the kill -9 test: a napari viewer with the annotation dock paints
strokes one by one (printing ``STROKE i`` after each) and then idles until it is killed.

Usage: python tests/_paint_and_die.py SCAN N_STROKES PAUSE_S
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    scan_path, n, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    import napari
    from qtpy.QtWidgets import QApplication

    from _strokes import kill_test_strokes, stroke
    from napari_softseg.io.nifti import read_nifti
    from napari_softseg.widgets.annotation.dock import SoftAnnotationWidget

    viewer = napari.Viewer(show=False)
    vol = read_nifti(scan_path)
    viewer.add_image(vol.data, affine=vol.affine, metadata=vol.geometry_metadata(), name=vol.name)
    dock = SoftAnnotationWidget(viewer)
    layer = dock.add_rater("kill test")
    layer.brush_size = 7
    app = QApplication.instance()

    def idle(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.002)

    print("READY", flush=True)
    for i, (level, points) in enumerate(kill_test_strokes(layer.data.shape, n), start=1):
        dock.set_level(level)
        stroke(layer, points)
        print(f"STROKE {i}", flush=True)
        if i < n:
            idle(pause)
    while True:  # the test kills us here, right after the last stroke
        idle(1.0)


if __name__ == "__main__":
    main()
