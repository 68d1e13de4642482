"""Turning NIfTI volumes into napari layer-data tuples (no Qt).

Used by the reader, the sample data and the docks so that every layer that comes from
a NIfTI file looks and behaves the same: placed by its nearest orthogonal orientation with
anatomical axis labels and millimetres (:mod:`napari_softseg.plugin.planes`), the file's true
affine and header in ``metadata`` for exact write-back, soft maps shown with a
transparent-to-opaque perceptual colormap and contrast 0-1, label maps as Labels.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from napari_softseg.io.nifti import NiftiVolume
from napari_softseg.plugin import roles
from napari_softseg.plugin.planes import layer_frame

LayerData = tuple  # (data, kwargs, layer_type)

#: The soft-map overlay: fully transparent at 0, opaque at 1, colours from a perceptual
#: (monotonic-lightness) ramp, so that faint probabilities stay visible but never hide
#: the scan underneath.
SOFT_COLORMAP_NAME = "softseg-soft"
_SOFT_RAMP = np.array(
    [  # value, r, g, b, alpha
        [0.00, 0.00, 0.00, 0.00, 0.00],
        [0.05, 0.23, 0.05, 0.45, 0.25],
        [0.25, 0.55, 0.10, 0.55, 0.55],
        [0.50, 0.85, 0.25, 0.35, 0.75],
        [0.75, 0.98, 0.55, 0.15, 0.88],
        [1.00, 1.00, 0.95, 0.35, 0.95],
    ],
    dtype=float,
)


def _ramp_colormap(ramp: np.ndarray, name: str):
    """A napari Colormap from rows ``(value, r, g, b, alpha)``."""
    from napari.utils.colormaps import Colormap

    return Colormap(colors=ramp[:, 1:], controls=ramp[:, 0], name=name)


def soft_colormap():
    """The napari Colormap used for soft maps (probabilities in [0, 1])."""
    return _ramp_colormap(_SOFT_RAMP, SOFT_COLORMAP_NAME)


#: The training preview: the network's live guess, drawn in greens so that it is never mistaken
#: for the soft label it learns from (the purple-to-yellow :data:`SOFT_COLORMAP_NAME`).
PREVIEW_COLORMAP_NAME = "softseg-preview"
_PREVIEW_RAMP = np.array(
    [  # value, r, g, b, alpha
        [0.00, 0.00, 0.00, 0.00, 0.00],
        [0.05, 0.00, 0.30, 0.15, 0.25],
        [0.50, 0.10, 0.70, 0.30, 0.65],
        [1.00, 0.65, 1.00, 0.45, 0.95],
    ],
    dtype=float,
)


def preview_colormap():
    """The napari Colormap of the training preview (probabilities in [0, 1])."""
    return _ramp_colormap(_PREVIEW_RAMP, PREVIEW_COLORMAP_NAME)


def robust_contrast(data: np.ndarray) -> tuple[float, float]:
    """Contrast limits from the 0.5 and 99.5 percentiles of the non-zero voxels."""
    values = data[data != 0] if np.any(data != 0) else data.ravel()
    if values.size > 2_000_000:  # a deterministic subsample is plenty for percentiles
        values = values[:: values.size // 2_000_000 + 1]
    lo, hi = np.percentile(values.astype(np.float32, copy=False), [0.5, 99.5])
    if not hi > lo:
        lo, hi = float(np.min(data)), float(np.max(data))
        if not hi > lo:
            hi = lo + 1.0
    return float(lo), float(hi)


def description(vol: NiftiVolume) -> str:
    """What the file says about its acquisition: the header's ``descrip`` and, from a BIDS
    sidecar ``.json`` next to it, ``SeriesDescription`` and ``ProtocolName`` (used to tell
    its contrast, :mod:`napari_softseg.plugin.contrasts`)."""
    import json

    from napari_softseg.io.nifti import nifti_stem

    parts = []
    try:
        descrip = vol.header["descrip"]
        text = (descrip.item() if hasattr(descrip, "item") else descrip)
        parts.append(text.decode("latin-1") if isinstance(text, bytes) else str(text))
    except (KeyError, TypeError, ValueError):
        pass
    if vol.path is not None:
        sidecar = vol.path.with_name(nifti_stem(vol.path) + ".json")
        try:
            doc = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        except (OSError, ValueError):
            doc = {}
        if isinstance(doc, dict):
            parts += [str(doc[k]) for k in ("SeriesDescription", "ProtocolName") if doc.get(k)]
    return " ".join(p.strip().strip("\x00") for p in parts if p.strip().strip("\x00"))


def _base_kwargs(vol: NiftiVolume, name: str, role: str, extra_meta: dict | None = None) -> dict[str, Any]:
    meta = vol.geometry_metadata()
    meta[roles.ROLE_KEY] = role
    meta["description"] = description(vol)
    if extra_meta:
        meta.update(extra_meta)
    return {"name": name, **layer_frame(vol.affine), "metadata": meta}


def scan_layer(vol: NiftiVolume, data: np.ndarray | None = None, name: str | None = None,
               extra_meta: dict | None = None) -> LayerData:
    arr = vol.data if data is None else data
    kwargs = _base_kwargs(vol, name or vol.name, roles.SCAN, extra_meta)
    kwargs.update(colormap="gray", contrast_limits=robust_contrast(arr), blending="translucent_no_depth")
    return (arr, kwargs, "image")


def soft_layer(vol: NiftiVolume, data: np.ndarray | None = None, name: str | None = None,
               extra_meta: dict | None = None, opacity: float = 0.8) -> LayerData:
    arr = np.asarray(vol.data if data is None else data, dtype=np.float32)
    kwargs = _base_kwargs(vol, name or vol.name, roles.SOFT, extra_meta)
    kwargs.update(colormap=soft_colormap(), contrast_limits=(0.0, 1.0), blending="translucent",
                  opacity=opacity, interpolation2d="nearest")
    return (arr, kwargs, "image")


def labels_layer(vol: NiftiVolume, data: np.ndarray | None = None, name: str | None = None,
                 extra_meta: dict | None = None, opacity: float = 0.5) -> LayerData:
    arr = vol.data if data is None else data
    arr = np.asarray(arr)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.uint8)
    kwargs = _base_kwargs(vol, name or vol.name, roles.LABELS, extra_meta)
    kwargs.update(opacity=opacity)
    return (arr, kwargs, "labels")


def layers_for_volume(vol: NiftiVolume) -> list[LayerData]:
    """Layer tuples for one file: labels, a soft map, a scan, or one scan layer per contrast."""
    kind = vol.kind() if vol.data.ndim == 3 else "image"
    if vol.data.ndim == 4:
        return channel_layers([vol], names=[f"{vol.name} [c{c}]" for c in range(vol.n_channels)])
    if kind == "labels":
        return [labels_layer(vol)]
    if kind == "soft":
        return [soft_layer(vol)]
    return [scan_layer(vol)]


def channel_layers(volumes: Sequence[NiftiVolume], names: Sequence[str] | None = None) -> list[LayerData]:
    """One scan layer per contrast, tagged as channels of one scan.

    ``volumes`` is either one 4-D volume (X, Y, Z, C) or several 3-D volumes on one grid.
    Each layer's metadata gets ``softseg_scan = {"group", "channel", "contrasts"}`` so the
    docks can find the contrasts that belong together. Only the first contrast is visible:
    the others, all opaque greyscale on one grid, would hide it (tick another in the layer
    list, or choose it in the Segment dock, to look at it).
    """
    if len(volumes) == 1 and volumes[0].data.ndim == 4:
        vol = volumes[0]
        arrays = [vol.data[..., c] for c in range(vol.n_channels)]
        bases = [vol] * vol.n_channels
    else:
        arrays = [v.data for v in volumes]
        bases = list(volumes)
    names = list(names) if names is not None else [b.name for b in bases]
    group = "+".join(names)
    out = []
    for c, (arr, base, nm) in enumerate(zip(arrays, bases, names)):
        meta = {"softseg_scan": {"group": group, "channel": c, "contrasts": names}}
        layer = scan_layer(base, data=arr, name=nm, extra_meta=meta)
        layer[1]["visible"] = c == 0
        out.append(layer)
    return out
