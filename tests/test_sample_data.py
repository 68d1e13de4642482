"""Sample data contributions and their licences."""

from __future__ import annotations

import numpy as np
import pytest

from napari_softseg.plugin import sample_data as _sample_data
from napari_softseg.io.samples import sample_dir


def test_every_sample_folder_has_its_licence():
    root = sample_dir()
    text = (root / "LICENSES.md").read_text()
    for folder, licence in [("sct_t2s", "LICENSE"), ("brain_t1", "LICENSE"), ("isbi2015_raters", "LICENSE.txt")]:
        assert (root / folder / licence).exists()
        assert f"`{folder}/`" in text
    for word in ("MIT", "BSD-2-Clause", "GPL-2", "Chris Rorden", "NeuroPoly", "Johns Hopkins"):
        assert word in text


@pytest.mark.parametrize("name", ["sct_t2s", "brain_t1", "isbi_raters"])
def test_samples_return_layers_with_affines(name):
    layers = getattr(_sample_data, name)()
    assert len(layers) >= 2
    for data, kwargs, kind in layers:
        assert kind in {"image", "labels"}
        assert np.asarray(kwargs["affine"]).shape == (4, 4)
        assert kwargs["metadata"]["shape"] == list(np.shape(data)[:3])


def test_brain_sample_soft_maps_are_soft():
    layers = {kw["name"]: (d, kw) for d, kw, _ in _sample_data.brain_t1()}
    gm, kw = layers["gm_fast"]
    assert gm.dtype == np.float32 and kw["contrast_limits"] == (0.0, 1.0)
    assert np.count_nonzero((gm > 0.05) & (gm < 0.95)) > 10_000  # a true soft label


def test_lesion_phantom_sample(phantom_paths):
    layers = {kw["name"]: kind for _, kw, kind in _sample_data.lesion_phantom()}
    assert layers["phantom_flair"] == "image" and layers["truth_fraction"] == "image"
    assert sum(k.startswith("rater_") for k in layers) == 4
