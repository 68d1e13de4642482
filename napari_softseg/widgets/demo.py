"""The demo workflow, in a real napari window (see ``napari-softseg demo``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .._viewer import centre_on, show_slices_along


def _process_events(seconds: float = 0.3) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def _dock(viewer, widget_name: str) -> object | None:
    try:
        _, widget = viewer.window.add_plugin_dock_widget("napari-softseg", widget_name)
        return widget
    except Exception as err:  # a dock that fails must not stop the demo
        print(f"  dock {widget_name!r} unavailable: {err}")
        return None


def run_demo(out: Path, headless: bool) -> int:
    import warnings

    import napari

    # the brain scan's affine is slightly oblique; napari says so for every slice
    warnings.filterwarnings("ignore", message="Non-orthogonal slicing")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    viewer = napari.Viewer(title="napari-softseg demo", show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open_sample("napari-softseg", "lesion_phantom")
    for name in ("Soft annotation", "Rater fusion"):
        _dock(viewer, name)

    truth_layer = viewer.layers["truth_fraction"]
    show_slices_along(viewer, truth_layer.affine.affine_matrix)
    best = int(np.argmax(truth_layer.data.sum(axis=(0, 1))))
    viewer.reset_view()
    centre = np.array(truth_layer.data.shape) / 2.0
    centre[2] = best
    centre_on(viewer, truth_layer.data_to_world(centre))
    viewer.layers.selection.active = viewer.layers["phantom_flair"]
    _process_events(1.0)

    written = {}
    shot = out / "screenshot.png"
    viewer.screenshot(str(shot), canvas_only=False, flash=False)
    written["screenshot"] = str(shot)
    for name in ("truth_fraction", "rater_generous", "rater_conservative"):
        path = viewer.layers[name].save(str(out / f"{name}.nii.gz"), plugin="napari-softseg")
        written[name] = path[0] if isinstance(path, list) else path
    summary = {"outputs": written, "slice_shown": best, "seconds": round(time.perf_counter() - t0, 2),
               "layers": [layer.name for layer in viewer.layers]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"napari-softseg demo: outputs written to {out}")
    for key, value in written.items():
        print(f"  {key}: {value}")
    if headless:
        viewer.close()
        return 0
    napari.run()
    return 0
