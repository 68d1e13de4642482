"""Which label files belong to which image: the one stem rule of the CLI and the training dock.

A NIfTI file's *stem* is its name without ``.nii`` / ``.nii.gz``
(:func:`napari_softseg.io.nifti.nifti_stem`). A label belongs to an image of stem ``s`` when
its stem is ``s`` or starts with ``s_`` (``sub01``, ``sub01_seg``, ``sub01_rater1``); when
the stems of several images match, the longest wins (``sub01_t2_seg`` belongs to
``sub01_t2``, not to ``sub01``). An image given as several files (contrasts of one scan) has
the stems of all of them.

* Folders (the training dock, :func:`pair_folder`): every image takes the labels that belong
  to it; several labels are several raters.
* Command line (:func:`check_order`): labels pair with images in order, the public contract;
  a label whose name belongs to another image of the same command is refused, since the
  order was then most likely wrong.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

from napari_softseg.errors import UserError
from napari_softseg.io.nifti import is_nifti_path, nifti_stem

__all__ = ["belongs_to", "owners", "pair_folder", "check_order"]

PathLike = Union[str, os.PathLike]


def belongs_to(label_stem: str, image_stem: str) -> bool:
    """Whether a file of stem ``label_stem`` is named as a label of the image ``image_stem``."""
    return label_stem == image_stem or label_stem.startswith(image_stem + "_")


def owners(label: PathLike, images: Sequence[Sequence[PathLike]]) -> list[int]:
    """Indices of the images (each a list of files) that ``label`` belongs to by its name:
    those with the longest matching stem; empty when its name matches no image."""
    stem = nifti_stem(label)
    lengths = [max((len(s) for s in map(nifti_stem, files) if belongs_to(stem, s)), default=-1) for files in images]
    longest = max(lengths, default=-1)
    return [i for i, n in enumerate(lengths) if n == longest] if longest >= 0 else []


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti_path(p.name))


def pair_folder(images_dir, labels_dir) -> list[tuple[Path, list[Path]]]:
    """Pair every NIfTI image of ``images_dir`` with the label file(s) of ``labels_dir`` that
    belong to it (see the module docstring); several are several raters. When both folders
    are the same, files that belong to another file are labels, not images."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise UserError(f"Folder {folder} does not exist.")
    labels = _nifti_files(labels_dir)
    images = _nifti_files(images_dir)
    if images_dir.resolve() == labels_dir.resolve():
        stems = [nifti_stem(p) for p in images]
        images = [p for p in images if not any(belongs_to(nifti_stem(p), s) for s in stems if s != nifti_stem(p))]
    if not images:
        raise UserError(f"Folder {images_dir} holds no NIfTI image (.nii or .nii.gz).")
    groups = [[img] for img in images]
    mine: list[list[Path]] = [[] for _ in images]
    for lab in labels:
        for i in owners(lab, groups):
            if lab != images[i]:
                mine[i].append(lab)
    for img, labs in zip(images, mine):
        if not labs:
            stem = nifti_stem(img)
            raise UserError(f"Image {img.name} has no label in {labels_dir} (expected {stem}.nii.gz or {stem}_<name>.nii.gz).")
    return list(zip(images, mine))


def check_order(images: Sequence[PathLike | Sequence[PathLike]], label_groups: Sequence[Sequence[PathLike]]) -> None:
    """Refuse labels given in the wrong order: ``label_groups[i]`` (the label or raters paired
    with ``images[i]``) must not hold a file whose name belongs to another image only."""
    files = [[img] if isinstance(img, (str, os.PathLike)) else list(img) for img in images]
    for i, group in enumerate(label_groups):
        for label in group:
            found = owners(label, files)
            if found and i not in found:
                other, own = Path(files[found[0]][0]).name, Path(files[i][0]).name
                raise UserError(
                    f"{Path(label).name} is named after image {other} but is paired with {own}; "
                    "labels pair with images in order, so give them in the order of the images."
                )
