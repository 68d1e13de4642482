"""Layer roles: what each layer this package adds or reads is for (napari, no Qt).

Every layer made by the reader, the sample data or a dock carries its role in
``metadata[ROLE_KEY]``; the docks choose the layers they offer (a scan to annotate or
segment, raters to fuse, labels to train on) with the predicates below, never with lists
of their own. Layers without a role (added from a script or another plugin) are judged by
their type alone: a 3-D greyscale Image is a scan, a Labels layer a label map.
"""

from __future__ import annotations

#: The metadata key that holds a layer's role.
ROLE_KEY = "softseg_role"

SCAN = "scan"  #: a greyscale volume (reader, sample data)
LABELS = "labels"  #: an integer label map (reader, sample data)
SOFT = "soft"  #: a soft map in [0, 1] (reader, sample data, Segment's prediction)
RATER = "rater"  #: one rater's confidence levels (Labels; Soft annotation dock)
FUSED = "fused"  #: the fused soft map (Rater fusion dock)
CONSENSUS = "consensus"  #: the hard consensus (Labels; Rater fusion dock)
DISAGREEMENT = "disagreement"  #: entropy of the rater average (Rater fusion dock)
PREDICTION_MASK = "prediction_mask"  #: the reviewed binary mask (Labels; Segment dock)
ENTROPY = "entropy"  #: voxel-wise entropy of a prediction (Segment dock)
TRAINING_PREVIEW = "training-preview"  #: the live prediction of one slice (Train dock)

#: Image roles whose values are probabilities in [0, 1].
SOFT_MAPS = frozenset({SOFT, FUSED})
#: Image roles of maps computed from a scan: never offered as a scan themselves.
DERIVED_IMAGES = frozenset({SOFT, FUSED, DISAGREEMENT, ENTROPY, TRAINING_PREVIEW})
#: The Rater fusion dock's results (never ticked as raters on their own).
FUSION_RESULTS = frozenset({FUSED, CONSENSUS, DISAGREEMENT})


def role(layer) -> str | None:
    """The layer's role, None when it has none."""
    return (getattr(layer, "metadata", None) or {}).get(ROLE_KEY)


def is_scan(layer) -> bool:
    """3-D greyscale Image layers that are not maps computed by this package."""
    from napari.layers import Image

    return (isinstance(layer, Image) and not getattr(layer, "rgb", False) and layer.ndim == 3
            and role(layer) not in DERIVED_IMAGES)


def is_rater(layer) -> bool:
    """Labels layers painted in the Soft annotation dock (confidence levels)."""
    from napari.layers import Labels

    return isinstance(layer, Labels) and role(layer) == RATER


def is_soft_map(layer) -> bool:
    """Greyscale Image layers holding probabilities: soft maps and fused maps."""
    from napari.layers import Image

    return isinstance(layer, Image) and not getattr(layer, "rgb", False) and role(layer) in SOFT_MAPS


def is_fusion_result(layer) -> bool:
    return role(layer) in FUSION_RESULTS
