"""Training data of the training dock, on the training process's side (no Qt, no napari).

The viewer only *snapshots* what the user chose (:class:`ScanSnapshot`, made by
:func:`._training_layers.snapshot_scan`): copies of the layer arrays, their voxel size and
names. The training process turns snapshots and folders of NIfTI files into a
:class:`~napari_softseg.engine.training.data.TrainingData` (:func:`build_training_data`), so painting on a
layer while training cannot change the run.

Label layers
------------
* a rater layer (``softseg_role == "rater"``) holds confidence levels 1..10, converted to the
  soft map ``level / 10`` (:func:`napari_softseg.labels.levels.levels_to_soft`);
* any other ``Labels`` layer holds class numbers (0 = background, 1..K);
* an ``Image`` layer holds a soft map in [0, 1] (or one per class on a 4th axis).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from napari_softseg.engine.training.pairing import pair_folder
from napari_softseg.errors import UserError
from napari_softseg.io.atomic import atomic_open

@dataclass
class ScanSnapshot:
    """Copies of one scan's contrasts and label maps (made in the GUI thread)."""

    name: str
    image: np.ndarray  # (X, Y, Z) or (X, Y, Z, C)
    labels: list  # raw copies: uint8 levels, integer classes or float soft maps
    label_kinds: list  # "rater", "classes" or "soft"
    label_names: list
    spacing: tuple
    contrasts: list
    layer: object = field(default=None, repr=False)  # the reference layer (for previews)


def check_contrasts(snapshots: Sequence[ScanSnapshot]) -> None:
    counts = {len(s.contrasts) for s in snapshots}
    if len(counts) > 1:
        a = snapshots[0]
        b = next(s for s in snapshots if len(s.contrasts) != len(a.contrasts))
        raise UserError(f"Scan '{a.name}' has {len(a.contrasts)} contrast(s) but '{b.name}' has {len(b.contrasts)}; every training scan needs the same contrasts.")



# ------------------------------------------------------------------------------ worker side
def _label_array(data: np.ndarray, kind: str) -> np.ndarray:
    if kind == "rater":
        from napari_softseg.labels.levels import levels_to_soft

        return levels_to_soft(data)
    return data


def build_training_data(snapshots: Sequence[ScanSnapshot], folders: Sequence[tuple], label_source):
    """The :class:`~napari_softseg.engine.training.data.TrainingData` of snapshots (first) and folder pairs."""
    from napari_softseg.engine.training.data import TrainingData, TrainingSubject

    subjects = [
        TrainingSubject(image=s.image, labels=[_label_array(a, k) for a, k in zip(s.labels, s.label_kinds)],
                        spacing=s.spacing, name=s.name, label_names=list(s.label_names))
        for s in snapshots
    ]
    for images_dir, labels_dir in folders:
        for img, labs in pair_folder(images_dir, labels_dir):
            subjects.append(TrainingSubject.from_nifti(img, labs))
    if not subjects:
        raise UserError("Choose at least one scan with a label, or add a folder of image/label pairs.")
    contrasts = list(snapshots[0].contrasts) if snapshots else None
    if contrasts is not None and len(contrasts) != subjects[0].n_channels:
        contrasts = None
    return TrainingData(subjects, label_source, contrasts=contrasts)


def copy_atomic(src, dst) -> Path:
    """Copy ``src`` to ``dst`` atomically (:mod:`napari_softseg.io.atomic`), so ``dst`` is
    never half-written."""
    import shutil

    with atomic_open(dst, "wb") as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out)
    return Path(dst)


def models_dir() -> Path:
    """Where trained models are written: ``$NAPARI_SOFTSEG_DATA/models`` or the per-user
    data folder's ``models`` (next to the autosaves)."""
    from napari_softseg.labels.autosave import user_data_dir

    override = os.environ.get("NAPARI_SOFTSEG_DATA")
    return Path(override) / "models" if override else user_data_dir().parent / "models"
