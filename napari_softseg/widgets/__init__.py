"""napari docks (Qt). Thin layers over the core modules; nothing here is needed on the CLI.

* :class:`~napari_softseg.widgets.annotation.dock.SoftAnnotationWidget` — "Soft annotation"
* :class:`~napari_softseg.widgets.fusion.FusionWidget` — "Rater fusion"
"""
