"""npe2 reader: ``.nii`` / ``.nii.gz`` through File > Open and drag-and-drop.

* one file: a scan (Image), a soft map (Image, 0-1 overlay colormap), a label map (Labels),
  or, for a 4-D file with a short last axis, one scan layer per contrast;
* several files at once (File > Open Files as Stack, or ``viewer.open(paths, stack=True)``):
  scans that share a voxel grid become the contrasts of one scan; label and soft maps are
  paired with that scan and must lie on its grid.

Problems a user can cause are shown as one-sentence napari notifications; the file is then
claimed but nothing is added (``[(None,)]``), so napari shows no traceback dialog. Notes on
how a file was read (NaN voxels taken as background) are shown as information.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

from napari_softseg.errors import UserError
from napari_softseg.io.nifti import NiftiVolume, check_same_grid, is_nifti_path, read_nifti, same_grid
from napari_softseg.plugin.layers import channel_layers, layers_for_volume
from napari_softseg.plugin.notify import notify_error, notify_info

PathOrPaths = Union[str, Sequence[str]]


def _as_list(path: PathOrPaths) -> list:
    return [path] if isinstance(path, (str, bytes)) or not isinstance(path, Sequence) else list(path)


def get_reader(path: PathOrPaths) -> Callable | None:
    paths = _as_list(path)
    if not paths or not all(is_nifti_path(p) for p in paths):
        return None
    return read_layers


def read_layers(path: PathOrPaths) -> list[tuple]:
    """The reader function: layer-data tuples, or ``[(None,)]`` after notifying an error."""
    try:
        return layer_data(path)
    except UserError as err:
        notify_error(str(err))
        return [(None,)]


def layer_data(path: PathOrPaths) -> list[tuple]:
    """Like :func:`read_layers` but raises :class:`UserError` (for the CLI and tests)."""
    paths = _as_list(path)
    volumes = [read_nifti(p) for p in paths]
    for note in (n for v in volumes for n in v.notes):
        notify_info(note)
    if len(volumes) == 1:
        return layers_for_volume(volumes[0])
    return _group(volumes)


def _group(volumes: list[NiftiVolume]) -> list[tuple]:
    scans = [v for v in volumes if v.data.ndim == 3 and v.kind() == "image"]
    masks = [v for v in volumes if not any(v is s for s in scans)]
    layers: list[tuple] = []
    if scans:
        ref = scans[0]
        if len(scans) > 1 and all(same_grid(ref, s) for s in scans[1:]):
            layers += channel_layers(scans)
        else:
            for s in scans:
                layers += layers_for_volume(s)
        for m in masks:
            check_same_grid(ref, m)
    for m in masks:
        layers += layers_for_volume(m)
    return layers

