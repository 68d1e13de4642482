"""Helper process for the kill -9 test: a napari viewer with the annotation dock (opened from
the Plugins menu) paints strokes one by one, printing ``STROKE i`` after each; before the
next stroke it waits until the autosave of the stroke is on disk. After the last stroke it
idles until it is killed.

Usage: python tests/_paint_and_die.py SCAN N_STROKES
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    scan_path, n = sys.argv[1], int(sys.argv[2])
    import napari
    from qtpy.QtWidgets import QApplication

    from _strokes import kill_test_strokes, stroke
    from napari_softseg.io.nifti import read_nifti

    viewer = napari.Viewer(show=False)
    vol = read_nifti(scan_path)  # as the test replays it: the array's own axis order on screen
    viewer.add_image(vol.data, affine=vol.affine, metadata=vol.geometry_metadata(), name=vol.name)
    _, dock = viewer.window.add_plugin_dock_widget("napari-softseg", "Soft annotation")
    layer = dock.add_rater("kill test")
    layer.brush_size = 7
    app = QApplication.instance()

    def saved() -> bool:
        """The stroke's snapshot was taken (the timer fired) and written (the writer is idle)."""
        return not dock.saver.timer.isActive() and dock.writer.pending() == 0

    print("READY", flush=True)
    for i, (level, points) in enumerate(kill_test_strokes(layer.data.shape, n), start=1):
        dock.set_level(level)
        stroke(layer, points)
        print(f"STROKE {i}", flush=True)
        while i < n and not saved():
            app.processEvents()
            time.sleep(0.002)
    while True:  # the test kills us here, right after the last stroke
        app.processEvents()
        time.sleep(0.01)


if __name__ == "__main__":
    main()
