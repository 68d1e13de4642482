"""Opening the plugin's docks as napari does (Plugins menu): through the manifest, so that the
dock receives napari's proxy viewer (``PublicOnlyProxy``), never the real one."""

from __future__ import annotations

#: the dock display names of ``napari.yaml``
ANNOTATION = "Soft annotation"
FUSION = "Rater fusion"
TRAINING = "Train SoftSeg"
SEGMENT = "Segment & review"


def open_dock(viewer, name: str):
    """Open the dock ``name`` from the Plugins menu of ``viewer`` and return the dock widget."""
    from napari.utils._proxies import PublicOnlyProxy

    _, widget = viewer.window.add_plugin_dock_widget("napari-softseg", name)
    assert isinstance(widget.viewer, PublicOnlyProxy)  # what a user's napari hands the dock
    return widget


def real(obj):
    """The napari object behind a proxy handed out by a plugin dock (layers it returns)."""
    return getattr(obj, "__wrapped__", obj)


def phantom_segment_dock(viewer):
    """The Segment dock of ``viewer`` on the lesion phantom sample with the shipped ``ms-lesion``."""
    viewer.open_sample("napari-softseg", "lesion_phantom")
    widget = open_dock(viewer, SEGMENT)
    widget.models.set_model("ms-lesion")
    widget.scan_combo.set_current(viewer.layers["phantom_flair"])
    return widget


def run_segment(qtbot, widget):
    """Click Segment and wait for its layers."""
    with qtbot.waitSignal(widget.segmented, timeout=180_000):
        assert widget.segment() is not None
    return widget
