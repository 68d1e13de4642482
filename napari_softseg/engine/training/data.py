"""Training data: subjects, label sources, resampling, normalisation, slicing and splits.

A :class:`TrainingData` holds whole volumes (built from arrays already in memory, e.g. napari
layers, or from NIfTI files) and a label source;
:func:`napari_softseg.engine.training.slices.prepare_slices` turns it into a
:class:`~napari_softseg.engine.training.slices.PreparedData` of 2-D slices ready for the
trainer. Preparation, per volume:

1. **Slicing axis.** The axis with the largest voxel size (the scan's slice axis); among
   tied axes the last one (an isotropic scan is sliced along its last axis). The network is 2-D and sees the other two
   axes (in array order) as height and width.
2. **Normalisation.** Each contrast is z-scored over the whole volume,
   :math:`x' = (x - \\mu_c) / \\sigma_c` (a constant contrast gives :math:`x - \\mu_c`), with the
   functions prediction uses (:func:`napari_softseg.engine.preprocess.zscore_stats` and
   :func:`~napari_softseg.engine.preprocess.apply_zscore`), so the network sees the same
   float32 numbers in training and at prediction time.
3. **Label source** (:data:`LABEL_SOURCES`): one label map per volume; the average, majority
   vote, STAPLE or soft-STAPLE estimate of several raters (:func:`napari_softseg.fusion.methods.fuse`); or
   *random sampling*, which keeps every rater and lets the trainer draw one anew for each
   sample at each epoch (Lemay et al., MELBA 2022).
4. **Resampling** of the in-plane axes to a common voxel size (by default the first
   volume's): images with 2nd-order splines, labels with linear interpolation (order 1)
   so that partial volume survives (Gros et al. 2021, section 2.1). The slice axis is never
   resampled (no slice is invented). Labels are clipped to [0, 1].
5. **Label mode.** "soft" presets keep the interpolated values; "hard" presets binarise
   them at 0.5 (``>= 0.5``; multi-class: the arg-max class including background). The
   augmentation binarises hard labels again after interpolation (:mod:`.augment`).
6. **Centre crop / pad** of every slice to the in-plane ``crop_size`` (images padded with
   their volume's normalised minimum, labels with 0).

Validation is split by volume (``val_fraction`` of the volumes, at least one) or, with a
single volume, by a contiguous slab of slices holding foreground (so that neighbouring,
nearly identical slices do not leak between the two sets).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence, Union

import numpy as np

from napari_softseg.engine.training.pairing import check_order
from napari_softseg.errors import UserError

__all__ = [
    "LabelSource",
    "LABEL_SOURCES",
    "get_label_source",
    "TrainingSubject",
    "TrainingData",
]

PathLike = Union[str, os.PathLike]
#: soft maps may overshoot 1 slightly after interpolation (sct_mt's gm maps reach 1.06)
_LABEL_TOLERANCE = 0.1


@dataclass(frozen=True)
class LabelSource:
    """How a volume's training target is made from its label maps.

    Attributes
    ----------
    name : str
        Registry key.
    title : str
        For menus.
    fusion : str or None
        Method passed to :func:`napari_softseg.fusion.methods.fuse` (None: no fusion).
    use_hard : bool
        Train on the fusion's binary output instead of its soft one (majority vote).
    random : bool
        Keep all raters; the trainer draws one per sample and epoch.
    """

    name: str
    title: str
    fusion: str | None = None
    use_hard: bool = False
    random: bool = False

    @property
    def multi_rater(self) -> bool:
        return self.fusion is not None or self.random


#: key -> label source.
LABEL_SOURCES: dict[str, LabelSource] = {
    s.name: s
    for s in (
        LabelSource("label", "One label map per volume"),
        LabelSource("average", "Average of the raters", fusion="average"),
        LabelSource("majority", "Majority vote of the raters", fusion="majority", use_hard=True),
        LabelSource("staple", "STAPLE estimate of the raters", fusion="staple"),
        LabelSource("soft-staple", "Soft STAPLE estimate of soft raters", fusion="soft-staple"),
        LabelSource("random", "A randomly drawn rater per sample and epoch", random=True),
    )
}


def get_label_source(name: str | LabelSource) -> LabelSource:
    if isinstance(name, LabelSource):
        return name
    try:
        return LABEL_SOURCES[name]
    except (KeyError, TypeError):
        raise UserError(f"Unknown label source {name!r}; choose one of {', '.join(LABEL_SOURCES)}.") from None


# ----------------------------------------------------------------------------- subjects


def _as_volume(array: np.ndarray, what: str, allow_channels: bool = True) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim not in (3, 4) or (a.ndim == 4 and not allow_channels) or 0 in a.shape:
        raise UserError(f"{what} must be a 3-D volume (X, Y, Z){' or (X, Y, Z, C)' if allow_channels else ''}, got shape {a.shape}.")
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if not (np.issubdtype(a.dtype, np.number)):
        raise UserError(f"{what} holds {a.dtype} values, not numbers.")
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        raise UserError(f"{what} contains NaN or infinite values.")
    return a


def _label_classes(label: np.ndarray, what: str) -> np.ndarray:
    """Float32 ``(X, Y, Z, K)`` in [0, 1] from a soft/binary map, an integer class map or a
    4-D stack of per-class soft maps."""
    if np.issubdtype(label.dtype, np.integer):
        lo, hi = int(label.min()), int(label.max())
        if lo < 0:
            raise UserError(f"{what} has negative values; expected a soft map in [0, 1] or class numbers 0..K.")
        if label.ndim == 4:
            if hi > 1:
                raise UserError(f"{what} is 4-D with values above 1; a 4-D label must hold one [0, 1] map per class.")
            return label.astype(np.float32)
        if hi > 64:
            raise UserError(f"{what} has values up to {hi}; expected a soft map in [0, 1] or a few class numbers.")
        k = max(hi, 1)
        return np.stack([(label == c) for c in range(1, k + 1)], axis=-1).astype(np.float32)
    lo, hi = float(label.min()), float(label.max())
    if lo < -1e-6 or hi > 1.0 + _LABEL_TOLERANCE:
        raise UserError(
            f"{what} has values in [{lo:.3g}, {hi:.3g}]; a label must be a soft map in [0, 1] "
            "or integer class numbers."
        )
    out = np.clip(label.astype(np.float32), 0.0, 1.0)
    return out if out.ndim == 4 else out[..., None]


@dataclass
class TrainingSubject:
    """One volume with its label maps (one per rater), on the same voxel grid.

    Parameters
    ----------
    image : array
        ``(X, Y, Z)`` or ``(X, Y, Z, C)`` with ``C`` contrasts, on-disk axis order.
    labels : list of arrays
        One map per rater, each ``(X, Y, Z)`` (soft float in [0, 1], binary, or integer
        classes ``0..K``) or ``(X, Y, Z, K)`` (one soft map per class).
    spacing : 3 floats
        Voxel size in mm along the array axes.
    name : str
        For messages.
    label_names : list of str, optional
        Names of the label maps, for messages.

    Raises :class:`UserError` when shapes differ, a label is empty or values are invalid.
    """

    image: np.ndarray
    labels: list
    spacing: tuple = (1.0, 1.0, 1.0)
    name: str = "volume"
    label_names: list | None = None
    affine: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.image = _as_volume(self.image, f"Image {self.name}")
        if isinstance(self.labels, np.ndarray):
            self.labels = [self.labels]
        self.labels = list(self.labels)
        if not self.labels:
            raise UserError(f"{self.name} has no label map.")
        names = list(self.label_names or [f"label {i + 1} of {self.name}" for i in range(len(self.labels))])
        if len(names) != len(self.labels):
            raise ValueError("label_names must name every label map")
        self.label_names = names
        sp = np.asarray(self.spacing, dtype=float).ravel()
        if sp.size != 3 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise UserError(f"{self.name}: voxel spacing must be three positive numbers, got {tuple(sp)}.")
        self.spacing = tuple(float(s) for s in sp)
        shape = self.image.shape[:3]
        converted = []
        for lab, what in zip(self.labels, names):
            lab = _as_volume(lab, what)
            if lab.shape[:3] != shape:
                raise UserError(f"{what} has shape {lab.shape[:3]} but its image {self.name} has {shape}.")
            lab = _label_classes(lab, what)
            if not np.any(lab > 0):
                raise UserError(f"{what} is empty: it marks no voxel.")
            converted.append(lab)
        n_classes = {lab.shape[-1] for lab in converted}
        if len(n_classes) > 1:
            raise UserError(f"The label maps of {self.name} have different numbers of classes {sorted(n_classes)}.")
        self.labels = converted

    @property
    def n_channels(self) -> int:
        return int(self.image.shape[3]) if self.image.ndim == 4 else 1

    @property
    def n_classes(self) -> int:
        return int(self.labels[0].shape[-1])

    @property
    def n_raters(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape[:3])  # type: ignore[return-value]

    @classmethod
    def from_nifti(cls, image: PathLike | Sequence[PathLike], labels: Sequence[PathLike]) -> "TrainingSubject":
        """Read an image (one file, or several files = contrasts of one scan) and its label
        maps; every file must lie on the image's voxel grid."""
        from napari_softseg.io.nifti import check_same_grid, read_nifti

        paths = [image] if isinstance(image, (str, os.PathLike)) else list(image)
        vols = [read_nifti(p) for p in paths]
        ref = vols[0]
        for v in vols[1:]:
            check_same_grid(ref, v)
        data = vols[0].data if len(vols) == 1 else np.concatenate([_with_channels(v.data) for v in vols], axis=-1)
        lab_vols = [read_nifti(p) for p in labels]
        for v in lab_vols:
            check_same_grid(ref, v)
        return cls(
            image=data,
            labels=[v.data for v in lab_vols],
            spacing=ref.spacing,
            name=ref.name,
            label_names=[v.path.name if v.path else v.name for v in lab_vols],
            affine=ref.affine,
        )


def _with_channels(a: np.ndarray) -> np.ndarray:
    return a[..., None] if a.ndim == 3 else a


@dataclass
class TrainingData:
    """Volumes, their label maps and how to turn several raters into one target.

    Build it from arrays (:meth:`from_arrays`, e.g. the GUI's layers) or files
    (:meth:`from_nifti`). The arrays are copied when prepared, never modified.
    """

    subjects: list
    label_source: LabelSource | str = "label"
    contrasts: list | None = None
    classes: list | None = None

    def __post_init__(self) -> None:
        if not self.subjects:
            raise UserError("No training volume was given.")
        self.label_source = get_label_source(self.label_source)
        src = self.label_source
        chans = {s.n_channels for s in self.subjects}
        if len(chans) > 1:
            raise UserError(f"The training images have different numbers of contrasts {sorted(chans)}; every volume needs the same.")
        ks = {s.n_classes for s in self.subjects}
        if len(ks) > 1:
            raise UserError(f"The label maps have different numbers of classes {sorted(ks)} across volumes.")
        for s in self.subjects:
            if src.name == "label" and s.n_raters != 1:
                raise UserError(
                    f"{s.name} has {s.n_raters} label maps; choose a fusion (average, majority, staple) "
                    "or random sampling for several raters."
                )
            if src.multi_rater and s.n_raters < 2 and src.fusion != "average":
                raise UserError(f"{src.title} needs at least two raters, but {s.name} has {s.n_raters}.")
        if src.random:
            rs = {s.n_raters for s in self.subjects}
            if len(rs) > 1:
                raise UserError(f"Random rater sampling needs the same number of raters for every volume, got {sorted(rs)}.")
        n_ch = self.n_channels
        if self.contrasts is None:
            first = self.subjects[0].name
            self.contrasts = [first] if n_ch == 1 else [f"{first}[{c}]" for c in range(n_ch)]
        self.contrasts = [str(c) for c in self.contrasts]
        if len(self.contrasts) != n_ch:
            raise UserError(f"{len(self.contrasts)} contrast names were given for images with {n_ch} contrasts.")
        if self.classes is None:
            self.classes = [f"class{k + 1}" for k in range(self.n_classes)]
        self.classes = [str(c) for c in self.classes]

    @property
    def n_channels(self) -> int:
        return self.subjects[0].n_channels

    @property
    def n_classes(self) -> int:
        return self.subjects[0].n_classes

    @classmethod
    def from_arrays(
        cls,
        images: Sequence[np.ndarray],
        labels: Sequence,
        *,
        spacings: Sequence[Sequence[float]] | None = None,
        label_source: str | LabelSource = "label",
        names: Sequence[str] | None = None,
        contrasts: Sequence[str] | None = None,
        classes: Sequence[str] | None = None,
    ) -> "TrainingData":
        """Volumes already in memory: ``images[i]`` with ``labels[i]`` (one array, or a list of
        rater arrays) and ``spacings[i]`` (default 1 mm)."""
        images = list(images) if not isinstance(images, np.ndarray) else [images]
        labels = list(labels) if not isinstance(labels, np.ndarray) else [labels]
        if len(labels) != len(images):
            raise UserError(f"{len(images)} images but {len(labels)} label sets were given; pair each image with its labels.")
        spacings = list(spacings) if spacings is not None else [(1.0, 1.0, 1.0)] * len(images)
        names = list(names) if names is not None else [f"volume {i + 1}" for i in range(len(images))]
        subjects = [
            TrainingSubject(image=img, labels=lab if isinstance(lab, (list, tuple)) else [lab], spacing=sp, name=nm)
            for img, lab, sp, nm in zip(images, labels, spacings, names)
        ]
        return cls(subjects, label_source, list(contrasts) if contrasts else None, list(classes) if classes else None)

    @classmethod
    def from_nifti(
        cls,
        images: Sequence[PathLike | Sequence[PathLike]],
        labels: Sequence[PathLike] | None = None,
        *,
        raters: Sequence[PathLike] | None = None,
        fusion: str | LabelSource | None = None,
    ) -> "TrainingData":
        """NIfTI files: one label per image (``labels``, paired in order) or several raters
        per image (``raters``; with N images and M raters each image gets M/N consecutive
        files) fused by ``fusion`` (``average``, ``majority``, ``staple`` or ``random``).
        A label named after another image of the call is refused
        (:func:`napari_softseg.engine.training.pairing.check_order`)."""
        images = list(images)
        if not images:
            raise UserError("No training image was given.")
        if (labels is None) == (raters is None):
            raise UserError("Give either one label per image or several raters (with a fusion method).")
        if labels is not None:
            labels = list(labels)
            if len(labels) != len(images):
                raise UserError(f"{len(images)} images but {len(labels)} labels were given; labels pair with images in order.")
            groups = [[lab] for lab in labels]
            source = get_label_source(fusion or "label")
        else:
            raters = list(raters)
            if len(raters) % len(images):
                raise UserError(
                    f"{len(raters)} rater files cannot be shared evenly among {len(images)} images; "
                    "give the same number of raters for every image, in image order."
                )
            k = len(raters) // len(images)
            groups = [raters[i * k : (i + 1) * k] for i in range(len(images))]
            if fusion is None:
                raise UserError("Several raters need a fusion method: average, majority, staple or random.")
            source = get_label_source(fusion)
        check_order(images, groups)
        subjects = [TrainingSubject.from_nifti(img, grp) for img, grp in zip(images, groups)]
        first = images[0]
        return cls(subjects, source, contrasts=_contrast_names(first, subjects[0].n_channels))


def _contrast_names(image, n_channels: int) -> list[str]:
    from napari_softseg.io.nifti import nifti_stem

    if isinstance(image, (str, os.PathLike)):
        stem = nifti_stem(image)
        return [stem] if n_channels == 1 else [f"{stem}[{c}]" for c in range(n_channels)]
    names = [nifti_stem(p) for p in image]
    return names if len(names) == n_channels else [f"contrast{c}" for c in range(n_channels)]
