"""The napari internals the docks rely on, each behind one function with a fallback.

napari has no public API for these yet. Every function names the internal it reads, why the
docks need it, and what happens when a napari release removes it: the feature degrades,
nothing raises. ``tests/test_napari_private.py`` asserts that each internal listed in
:data:`INTERNALS` still exists in the installed napari, so an upgrade that removes one
fails that test by name instead of silently taking a fallback.

Plugin docks see the viewer through napari's ``PublicOnlyProxy`` (which warns on private
access), so every function first takes the real object from behind the proxy.
"""

from __future__ import annotations

import numpy as np

#: ``(where, name)`` of every napari internal used through this module.
INTERNALS = (
    ("napari.layers.Labels instance", "_undo_history"),
    ("napari.layers.Labels instance", "_redo_history"),
    ("napari.layers.Labels", "_get_dims_to_paint"),
    ("napari.layers.labels._labels_utils", "mouse_event_to_labels_coordinate"),
    ("napari.layers.Image instance", "_data_slice"),
    ("napari.utils._proxies.PublicOnlyProxy", "__wrapped__"),
)


def unwrap(obj):
    """The napari object behind a plugin proxy (``PublicOnlyProxy`` is a ``wrapt`` proxy that
    wraps every layer anew on each access, so proxies are compared by what they wrap).
    Fallback: the object itself."""
    return getattr(obj, "__wrapped__", obj)


def undo_history(layer):
    """``Labels._undo_history``: the undo items (lists of edits), newest last. The annotation
    dock reads it to notice undo / redo. Fallback: empty (undo is then seen at the next edit)."""
    return getattr(unwrap(layer), "_undo_history", ())


def redo_history(layer):
    """``Labels._redo_history``, as :func:`undo_history`."""
    return getattr(unwrap(layer), "_redo_history", ())


def merge_last_undo_items(layer, length_before: int) -> bool:
    """Fold the newest undo item into the one before it, when exactly one item was added since
    the history had ``length_before`` items (the soft edge joins its stroke's undo step).
    Fallback: nothing merged (the soft edge is then an undo step of its own). Returns whether
    the items were merged."""
    hist = getattr(unwrap(layer), "_undo_history", None)
    if hist is None or len(hist) != length_before + 1 or len(hist) < 2:
        return False
    last = hist.pop()
    prev = hist.pop()
    hist.append(list(prev) + list(last))
    return True


def dims_to_paint(layer) -> list[int]:
    """``Labels._get_dims_to_paint()``: the axes a brush stroke paints in (the displayed ones).
    Fallback: the layer's last ``n_edit_dimensions`` axes."""
    try:
        return sorted(unwrap(layer)._get_dims_to_paint())
    except AttributeError:
        return list(range(layer.ndim))[-layer.n_edit_dimensions:]


def labels_coordinate(layer, event):
    """``mouse_event_to_labels_coordinate``: the data coordinate napari paints at for a mouse
    event (it handles 3-D views and the displayed order). Fallback: the event's world
    position through the layer's transform."""
    try:
        from napari.layers.labels._labels_utils import mouse_event_to_labels_coordinate

        return mouse_event_to_labels_coordinate(unwrap(layer), event)
    except (ImportError, AttributeError, TypeError):
        return layer.world_to_data(event.position)


def shown_slice_point(layer) -> np.ndarray | None:
    """``Image._data_slice.point``: the data point of the slice on screen (with an oblique affine
    napari ignores the out-of-plane rotation, so it can differ from ``world_to_data`` of the
    dims point). Fallback: None (the caller then uses ``world_to_data``)."""
    point = getattr(getattr(unwrap(layer), "_data_slice", None), "point", None)
    return None if point is None else np.asarray(point, dtype=float)
