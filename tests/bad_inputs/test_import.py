"""Importing rater masks: one line per file, the good files imported when others are bad, and one
tolerance rule for soft maps (interpolation overshoot clipped, the largest change reported)."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from bad_inputs.harness import digest, save
from napari_softseg.errors import UserError
from napari_softseg.io.nifti import read_nifti


@pytest.fixture
def scan_layer(world):
    napari_layers = pytest.importorskip("napari.layers")  # a layer object only: no viewer, no display
    from napari_softseg.plugin.layers import scan_layer as layer_tuple

    data, kwargs, _ = layer_tuple(read_nifti(world.scan))
    return napari_layers.Image(data, **kwargs)


def _import(scan, paths):
    from napari_softseg.widgets.annotation.rater_io import import_masks

    added = []
    layers, msg = import_masks(scan, paths, lambda name, levels: added.append(SimpleNamespace(name=name, data=levels))
                               or added[-1])
    return layers, msg


def test_a_bad_file_among_good_ones_is_reported_and_the_good_ones_imported(scan_layer, own):
    seg = save(own.folder / "seg.nii.gz", np.indices((16, 16, 6))[0] % 3, dtype=np.uint8)  # labels 0, 1, 2
    before = digest(own.folder)
    layers, msg = _import(scan_layer, [own.a, seg, own.soft])
    assert [lay.name for lay in layers] == ["a", "soft"]
    assert msg.startswith("Imported 2 rater(s) — a: binary; soft: soft, max rounding error ")
    assert msg.endswith(" Not imported: seg.nii.gz holds integer labels {0, 1, 2}, not a rater mask: expected a "
                        "binary (0/1) or soft (0-1 float) mask.")
    assert np.array_equal(layers[0].data, read_nifti(own.a).data * 10)
    assert digest(own.folder) == before


def test_only_bad_files_give_one_sentence_per_file(scan_layer, own, tmp_path):
    other = save(own.folder / "other.nii.gz", np.zeros((8, 8, 8), np.uint8))
    over = save(own.folder / "over.nii.gz", np.full((16, 16, 6), 1.5, np.float32))
    with pytest.raises(UserError) as info:
        _import(scan_layer, [other, over])
    assert str(info.value) == (
        "No mask was imported: other.nii.gz has shape (8, 8, 8), but the scan scan is (16, 16, 6); a rater mask must "
        "lie on the scan's grid. over.nii.gz has values from 1.5 to 1.5; a soft map must lie in [0, 1] (values at "
        "most 0.15 outside it, from interpolation, are clipped).")


def test_an_interpolated_soft_map_that_overshoots_is_imported_with_the_largest_change(tmp_path, shared_data):
    napari_layers = pytest.importorskip("napari.layers")
    from napari_softseg.plugin.layers import scan_layer as layer_tuple

    mt = shared_data / "sct_mt"
    data, kwargs, _ = layer_tuple(read_nifti(mt / "mt1.nii.gz"))
    scan = napari_layers.Image(data, **kwargs)
    wm = shutil.copy(mt / "mt1_wmseg.nii.gz", tmp_path)  # max 1.108, refused before
    raw = read_nifti(wm).data
    layers, msg = _import(scan, [wm])
    n_out = int(((raw > 1) | (raw < 0)).sum())
    assert [lay.name for lay in layers] == ["mt1_wmseg"] and n_out > 0
    assert f"{n_out} values outside [0, 1] clipped (largest change {raw.max() - 1:.3f})" in msg
    assert np.array_equal(layers[0].data, np.floor(np.clip(raw.astype(np.float64), 0, 1) * 10 + 0.5).astype(np.uint8))
