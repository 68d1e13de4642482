"""Warming Segment up before the click: the model is loaded and the convolution kernels for
the scan's slice size are prepared in the background while the user looks at the scan.

The first Segment of a session otherwise pays for loading the checkpoint and for oneDNN
creating its convolution primitives for each new input shape (the full batches and the last,
shorter one), on top of the prediction itself. :func:`warm_up` runs the model once on zeros
shaped like a few slices of the scan (one full batch and the remainder batch), through the
same :func:`~napari_softseg.review.segment.cached_model` and
:func:`~napari_softseg.engine.predict.predict_volume` as Segment.

A warm-up only fills caches: it writes nothing, shows nothing, and Segment never waits for
it (a click cancels it, see ``SegmentWidget._warm_up``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np


def warm_up_shape(shape, n_channels: int, slice_axis: int, batch: int) -> tuple:
    """The shape of the warm-up input: the scan's ``shape`` with ``batch`` + the remainder
    slices along ``slice_axis`` (so both batch sizes Segment will use are seen)."""
    n = int(shape[slice_axis])
    k = min(n, batch + (n % batch))
    out = [int(v) for v in shape[:3]]
    out[slice_axis] = k
    return tuple(out) + ((n_channels,) if n_channels > 1 else ())


def warm_up(model_path: Path, shape, spacing, cancel: Callable[[], bool] | None = None) -> bool:
    """Load the model (cached) and predict zeros of :func:`warm_up_shape` on the device
    Segment uses; True when done, False when ``cancel()`` stopped it between two batches
    (the model stays loaded). Other errors propagate (the dock ignores them)."""
    from napari_softseg.engine.predict import DEFAULT_BATCH_SIZE, PredictionCancelled, choose_slice_axis, predict_volume
    from napari_softseg.review.segment import cached_model

    model = cached_model(model_path)
    if cancel is not None and cancel():
        return False
    config = getattr(model, "softseg_config", {}) or {}
    axis = config.get("slice_axis")
    axis = choose_slice_axis(spacing) if axis is None else int(axis)
    zeros = np.zeros(warm_up_shape(shape, model.in_channels, axis, DEFAULT_BATCH_SIZE), np.float32)
    try:
        predict_volume(model, zeros, spacing=spacing, cancel=cancel)
    except PredictionCancelled:
        return False
    return True
