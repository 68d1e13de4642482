"""The napari internals behind :mod:`napari_softseg.widgets.napari_private` still exist.

Each internal is one test case named after it, so a napari upgrade that removes or renames
one fails here by name (the adapter itself would silently take its fallback). The fallbacks
are tested on objects without the internals.
"""

from __future__ import annotations

import importlib
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from napari_softseg.widgets import napari_private as npriv

#: Internals only the tests use (key presses on the canvas, napari's mouse-event wrapper).
TEST_INTERNALS = (
    ("napari._qt.qt_main_window.Window", "_qt_viewer"),
    ("napari.utils._proxies", "ReadOnlyWrapper"),
)


def _labels():
    from napari.layers import Labels

    return Labels(np.zeros((4, 5, 6), np.uint8))


def _owner(where: str):
    """The object an internal lives on: a fresh instance, a class or a module."""
    from napari.layers import Image
    from napari.utils._proxies import PublicOnlyProxy

    instances = {
        "napari.layers.Labels instance": _labels,
        "napari.layers.Image instance": lambda: Image(np.zeros((4, 5, 6), np.float32)),
        "napari.utils._proxies.PublicOnlyProxy": lambda: PublicOnlyProxy(_labels()),
    }
    if where in instances:
        return instances[where]()
    try:
        return importlib.import_module(where)
    except ImportError:
        module, _, name = where.rpartition(".")
        return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("where, name", npriv.INTERNALS + TEST_INTERNALS,
                         ids=[f"{w.split()[0]}.{n}" for w, n in npriv.INTERNALS + TEST_INTERNALS])
def test_internal_still_exists(where, name):
    assert hasattr(_owner(where), name), f"napari no longer has {where}.{name}: see napari_private.py"


def test_the_adapter_reads_the_internals_on_a_real_layer():
    layer = _labels()
    layer.paint((1, 2, 3), 4)
    layer.paint((2, 2, 3), 5)
    assert len(npriv.undo_history(layer)) == 2 and len(npriv.redo_history(layer)) == 0
    assert npriv.merge_last_undo_items(layer, 1)
    assert len(npriv.undo_history(layer)) == 1
    layer.undo()  # one undo now reverts both edits
    assert not layer.data.any() and len(npriv.redo_history(layer)) == 1
    assert npriv.dims_to_paint(layer) == [1, 2]  # napari paints in the two displayed axes
    assert npriv.shown_slice_point(layer) is not None


def test_the_adapter_sees_through_plugin_proxies():
    from napari.utils._proxies import PublicOnlyProxy

    layer = _labels()
    proxy = PublicOnlyProxy(layer)
    assert npriv.unwrap(proxy) is layer and npriv.unwrap(layer) is layer
    layer.paint((1, 2, 3), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the proxy warns on private access
        assert len(npriv.undo_history(proxy)) == 1


def test_fallbacks_without_the_internals():
    plain = SimpleNamespace(ndim=3, n_edit_dimensions=2, world_to_data=lambda p: np.asarray(p) / 2)
    assert npriv.undo_history(plain) == () and npriv.redo_history(plain) == ()
    assert npriv.merge_last_undo_items(plain, 0) is False
    assert npriv.dims_to_paint(plain) == [1, 2]
    assert npriv.shown_slice_point(plain) is None
    event = SimpleNamespace(position=(2.0, 4.0, 6.0))
    np.testing.assert_allclose(npriv.labels_coordinate(plain, event), [1.0, 2.0, 3.0])
