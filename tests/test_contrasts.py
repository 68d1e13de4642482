"""Contrasts: a layer's contrast from its name, file name or metadata, the Segment dock's
matching of open layers to the model's inputs, the one-sentence warning on a mismatch, and
multi-contrast scans shown one contrast at a time.

Oracles: contrast names written by hand for each text; BraTS file names (t2f = FLAIR);
predictions computed directly with ``predict_volume`` on the contrasts stacked in the
model's order (and checked to differ from the reversed order, so the order is seen).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from napari_softseg.plugin.contrasts import canonical, contrast_of, match_inputs, mismatch

BRATS = ("t1n", "t1c", "t2w", "t2f")


@pytest.mark.parametrize("text, expected", [
    ("sub-01_ses-1_FLAIR", "FLAIR"), ("t2f", "FLAIR"), ("t2_flair", "FLAIR"), ("phantom_flair", "FLAIR"),
    ("t1n", "T1w"), ("sub-01_T1w", "T1w"), ("MPRAGE", "T1w"), ("t1c", "T1c"), ("T1_post_gd", "T1c"),
    ("t2w", "T2w"), ("T2", "T2w"), ("t2s_uncropped", "T2star"), ("T2*", "T2star"),
    ("bet", None), ("mt1", None), ("training01_rater1", None), ("", None),
])
def test_contrast_names(text, expected):
    assert canonical(text) == expected


def _layer(name, path=None, description="", group=None, channel=0):
    md = {"source_path": path, "description": description}
    if group:
        md["softseg_scan"] = {"group": group, "channel": channel}
    return SimpleNamespace(name=name, metadata=md)


def test_contrast_from_layer_name_then_file_name_then_metadata():
    assert contrast_of(_layer("t2f")).name == "FLAIR" and contrast_of(_layer("t2f")).source == "layer name"
    by_file = contrast_of(_layer("scan 3", path="/data/sub-02_T2w.nii.gz"))
    assert (by_file.name, by_file.source) == ("T2w", "file name")
    by_meta = contrast_of(_layer("scan 3", path="/data/0003.nii.gz", description="AX FLAIR 3mm"))
    assert (by_meta.name, by_meta.source) == ("FLAIR", "metadata")
    renamed = contrast_of(_layer("my FLAIR", path="/data/sub-02_T2w.nii.gz"))  # the user's name wins
    assert renamed.name == "FLAIR"
    assert contrast_of(_layer("scan 3", path="/data/0003.nii.gz")).name is None


def test_matching_by_name_prefers_the_chosen_scan_and_falls_back_to_position():
    brats = [_layer(c, group="g", channel=k) for k, c in enumerate(BRATS)]
    assert match_inputs(["FLAIR"], brats, anchor=brats[0]) == [brats[3]]
    four = match_inputs(["FLAIR", "T2w", "T1c", "T1w"], list(reversed(brats)), anchor=brats[0])
    assert [lay.name for lay in four] == ["t2f", "t2w", "t1c", "t1n"]
    # a second session's FLAIR: the one opened with the chosen scan is preferred
    other = [_layer(c + "_b", group="h", channel=k) for k, c in enumerate(BRATS)]
    assert match_inputs(["FLAIR"], other + brats, anchor=brats[1]) == [brats[3]]
    # unknown contrasts (a 4-D file's channels): by position within the chosen scan
    channels = [_layer(f"multi [c{k}]", group="m", channel=k) for k in range(2)]
    assert match_inputs(["T1w", "FLAIR"], list(reversed(channels)), anchor=channels[0]) == channels
    # nothing named FLAIR and nothing unknown: a one-input model keeps the chosen scan (warned)
    assert match_inputs(["FLAIR"], brats[:1], anchor=brats[0]) == [brats[0]]
    assert match_inputs(["FLAIR", "T1w"], [], anchor=None) == [None, None]


def test_mismatch_is_one_sentence_only_for_a_known_other_contrast():
    text = mismatch("FLAIR", _layer("t1n"))
    assert text == ("The model expects FLAIR but 't1n' looks like T1w (from its layer name); choose the FLAIR "
                    "layer, or the prediction will not mean much.")
    assert text.count(".") == 1 and text.endswith(".")
    assert mismatch("FLAIR", _layer("t2f")) == "" and mismatch("FLAIR", _layer("bet")) == ""


def test_reader_keeps_the_bids_sidecar_description(tmp_path):
    from napari_softseg.io.nifti import write_nifti
    from napari_softseg.plugin.reader import layer_data

    path = write_nifti(tmp_path / "0007.nii.gz", np.random.default_rng(0).random((6, 6, 4)) * 500, affine=np.eye(4))
    (tmp_path / "0007.json").write_text(json.dumps({"SeriesDescription": "Sag 3D FLAIR", "ProtocolName": "flair_sag"}))
    (_, kwargs, _), = layer_data(str(path))
    assert kwargs["metadata"]["description"] == "Sag 3D FLAIR flair_sag"
    assert contrast_of(SimpleNamespace(name=kwargs["name"], metadata=kwargs["metadata"])).name == "FLAIR"


# ---------------------------------------------------------------------------- the Segment dock

def _segment_dock(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-softseg", "Segment & review")
    return viewer, widget


@pytest.mark.gui
def test_brats_contrasts_open_one_visible_and_the_lesion_model_gets_flair(make_napari_viewer, shared_data, qtbot):
    from _notes import Notifications

    viewer, dock = _segment_dock(make_napari_viewer)
    paths = [str(shared_data / f"brats_case/{c}.nii.gz") for c in BRATS]
    viewer.open(paths, stack=True, plugin="napari-softseg")
    dock.models.set_model("ms-lesion")
    assert [lay.name for lay in dock.inputs.layers()] == ["t2f"]  # FLAIR, not the first contrast t1n
    assert {lay.name for lay in viewer.layers if lay.visible} == {"t2f"}  # the input is what one sees
    assert "FLAIR ← t2f" in dock.inputs.note.text() and not dock.inputs.warnings()
    # the user picks t1n: one sentence says it is the wrong contrast, in the dock and on Segment
    dock.scan_combo.setCurrentIndex([lay.name for lay in dock.scan_combo.layers()].index("t1n"))
    assert {lay.name for lay in viewer.layers if lay.visible} == {"t1n"}
    assert dock.inputs.warnings() == [mismatch("FLAIR", viewer.layers["t1n"])]
    assert "The model expects FLAIR but" in dock.inputs.note.text()
    warned = Notifications("warning")
    assert dock.segment() is not None
    dock.cancel()  # (the prediction itself is not needed to see the warning)
    assert list(warned)[:1] == [mismatch("FLAIR", viewer.layers["t1n"])]
    qtbot.waitUntil(lambda: not dock.running, timeout=120_000)


@pytest.mark.gui
def test_a_two_contrast_model_gets_its_layers_in_its_order(make_napari_viewer, tmp_path, qtbot):
    import torch

    from napari_softseg.engine.checkpoint import make_config, save_checkpoint
    from napari_softseg.engine.model import UNet
    from napari_softseg.engine.predict import load_model, predict_volume
    from napari_softseg.io.nifti import write_nifti

    rng = np.random.default_rng(3)
    flair, t1 = rng.random((32, 32, 6)).astype(np.float32) * 300, rng.random((32, 32, 6)).astype(np.float32) * 900
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    paths = [write_nifti(tmp_path / "sub-01_FLAIR.nii.gz", flair, affine=affine),
             write_nifti(tmp_path / "sub-01_T1w.nii.gz", t1, affine=affine)]
    torch.manual_seed(0)
    net = UNet(2, 1, depth=1, base_features=4, activation="sigmoid")
    model_path = save_checkpoint(tmp_path / "two.pt", net, make_config(net, contrasts=["T1w", "FLAIR"]))
    viewer, dock = _segment_dock(make_napari_viewer)
    viewer.open([str(p) for p in paths], stack=True, plugin="napari-softseg")
    dock.models.add_file(model_path)
    assert [lay.name for lay in dock.inputs.layers()] == ["sub-01_T1w", "sub-01_FLAIR"]
    assert dock.inputs.problem() == "" and not dock.inputs.warnings()
    with qtbot.waitSignal(dock.segmented, timeout=60_000):
        assert dock.segment() is not None
    model = load_model(model_path)
    right = predict_volume(model, np.stack([t1, flair], axis=-1), spacing=(1.0, 1.0, 3.0))
    wrong = predict_volume(model, np.stack([flair, t1], axis=-1), spacing=(1.0, 1.0, 3.0))
    assert np.abs(right - wrong).max() > 1e-3  # the order matters, so the check below can fail
    np.testing.assert_allclose(dock.review.soft, right, atol=1e-6)
    # two inputs fed by one layer are refused with one sentence
    dock.inputs.combos[1].set_current(viewer.layers["sub-01_T1w"])
    assert dock.inputs.problem() == "Each input needs its own layer, but 'sub-01_T1w' feeds two of them; choose another."
    assert dock.segment() is None
