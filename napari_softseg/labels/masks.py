"""Binarisation: the one rule that turns a soft map into a mask.

A voxel is foreground when its value is **at or above** the threshold::

    mask = soft >= threshold

(the convention of the SoftSeg reference code, ivadomed's ``threshold_predictions``). Every
part of the package binarises through :func:`binarize`: hard training labels, the threshold
search, the CLI's masks, the metrics, the lesion analysis, the fusion's consensus and the
review, so a voxel whose value equals the threshold is foreground everywhere.

The comparison is made in the values' own precision: a float32 map is compared with the
float32 nearest to the threshold, whether the threshold comes as a Python float or as a
numpy float64 (e.g. from ``np.arange``), so ``0.3`` stored in a float32 map is foreground at
threshold 0.3 in every caller.
"""

from __future__ import annotations

import numpy as np

#: The default threshold of a soft map (a rater's confidence, a truth fraction).
DEFAULT_THRESHOLD = 0.5


def binarize(values, threshold: float = DEFAULT_THRESHOLD):
    """Boolean mask ``values >= threshold`` (numpy array or torch tensor alike), compared in
    the values' precision (see the module docstring)."""
    if isinstance(threshold, np.generic):
        threshold = threshold.item()  # a Python number: numpy and torch compare in the values' dtype
    return values >= threshold
