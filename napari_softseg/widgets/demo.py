"""The demo workflow, in a real napari window (see ``napari-softseg demo``).

Opens the lesion phantom, docks Soft annotation, Rater fusion and Segment & review, loads the
shipped ``ms-lesion`` model, clicks **Segment**, selects the first flagged lesion and, when
headless, writes a screenshot and the outputs (soft and binary NIfTI, the review's CSV and
JSON, a ``summary.json``) to the output folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from napari_softseg.plugin.viewer import centre_on, show_acquisition_plane

DEMO_MODEL = "ms-lesion"


def _process_events(seconds: float = 0.3) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def _dock(viewer, widget_name: str) -> tuple[object | None, object | None]:
    """Add a dock of this plugin as a tab of the right dock area: (dock widget, widget)."""
    try:
        return viewer.window.add_plugin_dock_widget("napari-softseg", widget_name, tabify=True)
    except Exception as err:  # a dock that fails must not stop the demo
        print(f"  dock {widget_name!r} unavailable: {err}")
        return None, None


class StallMeter:
    """Largest gap between the ticks of a 10 ms ``QTimer``: how long the UI thread was busy."""

    def __init__(self, interval_ms: int = 10) -> None:
        from qtpy.QtCore import QTimer

        self.gaps: list[float] = []
        self._last = None
        self._timer = QTimer()
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.gaps.append(now - self._last)
        self._last = now

    def start(self) -> None:
        self._last = None
        self._timer.start()

    def stop(self) -> float:
        self._timer.stop()
        return max(self.gaps, default=0.0)


def segment_and_wait(widget, timeout: float = 120.0) -> dict:
    """Click Segment, keep the event loop running until the layers are there; timings (s)."""
    from qtpy.QtWidgets import QApplication

    done = []
    widget.segmented.connect(lambda: done.append(time.perf_counter()))
    meter = StallMeter()
    meter.start()
    t0 = time.perf_counter()
    widget.run_controls.segment_button.click()
    while not done and time.perf_counter() - t0 < timeout:
        if not widget.running and widget.review is None and time.perf_counter() - t0 > 1.0:
            break  # failed (a notification says why)
        QApplication.processEvents()
        time.sleep(0.002)
    stall = meter.stop()
    if not done:
        raise RuntimeError("Segment did not finish; see the notification.")
    return dict(widget.last_timings, max_ui_stall_s=stall, ui_ticks=len(meter.gaps))


def run_demo(out: Path, headless: bool) -> int:
    import napari

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    viewer = napari.Viewer(title="napari-softseg demo", show=True)
    viewer.window.resize(1600, 1000)
    viewer.open_sample("napari-softseg", "lesion_phantom")
    for name in ("Soft annotation", "Rater fusion"):
        _dock(viewer, name)
    seg_dock, seg = _dock(viewer, "Segment & review")
    if seg_dock is not None:
        seg_dock.raise_()  # the tab in front

    scan = viewer.layers["phantom_flair"]
    show_acquisition_plane(viewer, scan)  # axial, radiological (the docks did it too)
    viewer.layers["truth_fraction"].visible = False  # the prediction is the overlay to look at
    _process_events(0.5)

    written: dict[str, str] = {}
    summary: dict = {}
    if seg is not None:
        seg.models.set_model(DEMO_MODEL)
        seg.scan_combo.set_current(scan)
        timings = segment_and_wait(seg)
        lesion_id = seg.step_flagged(1)
        if lesion_id is None and seg.review.records():
            lesion_id = seg.review.records()[0].id
            seg.panel.table.select_id(lesion_id)
        summary.update(_segment_summary(seg, viewer, timings, lesion_id))
        for key, path in seg.save_predictions(out).items():
            written[f"prediction_{key}"] = str(path)
        for key, path in seg.export_review(out).items():
            written[f"review_{key}"] = str(path)
        viewer.layers.selection.active = seg.layers["soft"]
    else:
        best = int(np.argmax(viewer.layers["truth_fraction"].data.sum(axis=(0, 1))))
        centre = np.array(scan.data.shape) / 2.0
        centre[2] = best
        centre_on(viewer, scan.data_to_world(centre))
    _process_events(1.0)

    shot = out / "screenshot.png"
    viewer.screenshot(str(shot), canvas_only=False, flash=False)
    written["screenshot"] = str(shot)
    summary.update({"outputs": written, "seconds": round(time.perf_counter() - t0, 2),
                    "layers": [layer.name for layer in viewer.layers]})
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"napari-softseg demo: outputs written to {out}")
    for key, value in written.items():
        print(f"  {key}: {value}")
    if headless:
        viewer.close()
        return 0
    napari.run()
    return 0


def _segment_summary(seg, viewer, timings: dict, lesion_id) -> dict:
    """What the demo did, with the prediction's lesion detection against the phantom truth."""
    from napari_softseg.metrics.detection import lesion_detection

    review = seg.review
    truth = np.asarray(viewer.layers["truth_fraction"].data)
    det = lesion_detection(review.soft, truth, threshold=review.threshold, truth_threshold=0.5)
    scan = viewer.layers["phantom_flair"]
    return {
        "model": seg.model_identity(),
        "threshold": review.threshold,
        "timings_s": {k: (round(float(v), 3) if isinstance(v, (int, float)) else v) for k, v in timings.items()},
        "n_lesions": len(review.records("lesion")),
        "n_flagged": sum(r.flagged for r in review.records("lesion")),
        "n_candidates": len(review.records("candidate")),
        "flag_model": review.flags.label if review.flags is not None else None,
        "selected_lesion": lesion_id,
        "selected_reason": review.table.by_id(lesion_id).reason if lesion_id is not None else None,
        "slice_shown": int(round(scan.world_to_data(viewer.dims.point)[2])),
        "detection_vs_truth": {"ltpr_%": det.ltpr, "lfdr_%": det.lfdr, "n_truth": det.n_truth,
                               "n_pred": det.n_pred, "n_detected": det.n_detected},
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m napari_softseg.widgets.demo --out DIR [--headless]`` (started by ``napari-softseg demo``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="napari-softseg demo")
    parser.add_argument("--out", required=True)
    parser.add_argument("--headless", action="store_true")
    args = parser.parse_args(argv)
    return run_demo(Path(args.out).resolve(), headless=args.headless)


if __name__ == "__main__":  # pragma: no cover - started as a process by the demo command
    import sys

    sys.exit(main())
