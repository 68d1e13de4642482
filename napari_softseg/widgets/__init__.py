"""napari docks (Qt). Thin layers over the core modules; nothing here is needed on the CLI.

* :class:`~napari_softseg.widgets.annotation.dock.SoftAnnotationWidget` — "Soft annotation"
* :class:`~napari_softseg.widgets.fusion.FusionWidget` — "Rater fusion"
* :class:`~napari_softseg.widgets.training.dock.TrainingWidget` — "Train SoftSeg"
* :class:`~napari_softseg.widgets.segment.dock.SegmentWidget` — "Segment & review"

napari internals are used only through :mod:`napari_softseg.widgets.napari_private`.
"""
