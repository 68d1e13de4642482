"""Binarisation: the one rule that turns a soft map into a mask.

A voxel is foreground when its value is **at or above** the threshold::

    mask = soft >= threshold

(the convention of the SoftSeg reference code, ivadomed's ``threshold_predictions``). Every
part of the package binarises through :func:`binarize`: hard training labels, the threshold
search, the CLI's masks, the metrics, the lesion analysis and the review, so a voxel whose
value equals the threshold is foreground everywhere.
"""

from __future__ import annotations

#: The default threshold of a soft map (a rater's confidence, a truth fraction).
DEFAULT_THRESHOLD = 0.5


def binarize(values, threshold: float = DEFAULT_THRESHOLD):
    """Boolean mask ``values >= threshold`` (numpy array or torch tensor alike)."""
    return values >= threshold
