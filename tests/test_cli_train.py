"""``napari-softseg train``: the contract, progress output, user errors, and train -> predict."""

from __future__ import annotations

import numpy as np
import pytest

from napari_softseg.commands import build_parser, main
from napari_softseg.io.nifti import read_nifti, write_nifti

TINY = ["--epochs", "2", "--depth", "1", "--features", "4", "--batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def scans(shared_data, tmp_path_factory):
    """A small real block of fast_t1 (away from the artificial spheres) with an LAS affine."""
    folder = tmp_path_factory.mktemp("cli")
    bet = read_nifti(shared_data / "fast_t1" / "bet.nii.gz")
    gm = read_nifti(shared_data / "fast_t1" / "pve_1.nii.gz")
    box = (slice(40, 104), slice(50, 114), slice(60, 68))
    affine = bet.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([40, 50, 60])
    affine[:3, 0] *= -1  # flip the first axis: LAS, so a wrong affine would show
    img, lab = bet.data[box], gm.data[box].astype(np.float32)
    write_nifti(folder / "img.nii.gz", img, affine=affine)
    write_nifti(folder / "gm.nii.gz", lab, affine=affine)
    write_nifti(folder / "gm_r2.nii.gz", (lab > 0.5).astype(np.uint8), affine=affine)
    write_nifti(folder / "shifted.nii.gz", lab, affine=affine + _shift())
    return folder, affine


def _shift():
    s = np.zeros((4, 4))
    s[0, 3] = 5.0
    return s


def test_preset_names_match_the_registry():
    from napari_softseg.commands.train import PRESET_NAMES
    from napari_softseg.engine.presets import PRESETS

    assert set(PRESET_NAMES) == set(PRESETS)


def test_help_lists_the_contract_options():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for option in ("--image", "--label", "--rater", "--fusion", "--preset", "--epochs", "--device", "--seed",
                   "--init", "--out", "--batch-size", "--lr", "--crop", "--depth", "--features",
                   "--val-fraction", "--patience"):
        assert option in text


def test_crop_parsing():
    from napari_softseg.commands.train import parse_crop
    from napari_softseg.errors import UserError

    assert parse_crop("128") == (128, 128) and parse_crop("160x192") == (160, 192) and parse_crop(None) is None
    with pytest.raises(UserError):
        parse_crop("big")


@pytest.mark.slow
def test_train_then_predict_writes_the_source_geometry(scans, tmp_path, capsys):
    folder, affine = scans
    model = tmp_path / "gm.pt"
    rc = main(["train", "--image", str(folder / "img.nii.gz"), "--label", str(folder / "gm.nii.gz"), *TINY,
               "--out", str(model)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "epoch 1/2" in captured.err and "epoch 2/2" in captured.err  # one line per epoch off a terminal
    assert "model written to" in captured.out and model.exists()
    out = tmp_path / "soft.nii.gz"
    rc = main(["predict", "--model", str(model), "-o", str(out), str(folder / "img.nii.gz")])
    assert rc == 0, capsys.readouterr().err
    pred = read_nifti(out)
    src = read_nifti(folder / "img.nii.gz")
    np.testing.assert_allclose(pred.affine, affine, atol=1e-5)
    assert pred.spatial_shape == src.spatial_shape and pred.data.dtype == np.float32
    assert 0.0 <= pred.data.min() and pred.data.max() <= 1.0


@pytest.mark.slow
def test_raters_with_fusion_and_fine_tuning(scans, tmp_path, capsys):
    folder, _ = scans
    first = tmp_path / "avg.pt"
    rc = main(["train", "--image", str(folder / "img.nii.gz"), "--rater", str(folder / "gm.nii.gz"),
               "--rater", str(folder / "gm_r2.nii.gz"), "--fusion", "random", *TINY, "--out", str(first)])
    err = capsys.readouterr().err
    assert rc == 0, err
    tuned = tmp_path / "tuned.pt"
    rc = main(["train", "--image", str(folder / "img.nii.gz"), "--label", str(folder / "gm.nii.gz"),
               "--init", str(first), "--epochs", "1", "--device", "cpu", "--out", str(tuned), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    from napari_softseg.engine.checkpoint import load_checkpoint

    _, cfg = load_checkpoint(tuned)
    assert cfg["training"]["init"] == "avg.pt" and cfg["architecture"]["base_features"] == 4
    assert cfg["training"]["label_source"] == "label" and captured.err == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rater", "{f}/gm.nii.gz", "--rater", "{f}/gm_r2.nii.gz"], "needs --fusion"),
        (["--label", "{f}/gm.nii.gz", "--fusion", "average"], "does not apply to --label"),
        (["--label", "{f}/gm.nii.gz", "--crop", "31"], "multiples of 2"),
        (["--label", "{f}/shifted.nii.gz"], "affines differ"),
        (["--label", "{f}/gm.nii.gz", "--init", "{f}/missing.pt"], "no such model file"),
        (["--label", "{f}/gm.nii.gz", "--epochs", "0"], "--epochs must be at least 1, got 0."),
        (["--label", "{f}/gm.nii.gz", "--label", "{f}/gm.nii.gz"], "labels pair with images"),
    ],
)
def test_user_errors_exit_2_with_one_sentence(scans, tmp_path, capsys, args, message):
    folder, _ = scans
    argv = ["train", "--image", str(folder / "img.nii.gz"), *[a.format(f=folder) for a in args],
            "--device", "cpu", "--depth", "1", "--out", str(tmp_path / "m.pt")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("napari-softseg train: error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "m.pt").exists()


def test_missing_output_folder_is_refused_before_training(scans, tmp_path, capsys):
    folder, _ = scans
    rc = main(["train", "--image", str(folder / "img.nii.gz"), "--label", str(folder / "gm.nii.gz"),
               "--out", str(tmp_path / "nowhere" / "m.pt")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_labels_in_the_wrong_order_are_refused(scans, tmp_path, capsys):
    """--image a --image b --label b_seg --label a_seg: b_seg is named after b, not a."""
    folder, affine = scans
    img, lab = read_nifti(folder / "img.nii.gz"), read_nifti(folder / "gm.nii.gz")
    for name in ("a", "b"):
        write_nifti(tmp_path / f"{name}.nii.gz", img.data, affine=affine)
        write_nifti(tmp_path / f"{name}_seg.nii.gz", lab.data, affine=affine)
    argv = ["train", "--image", str(tmp_path / "a.nii.gz"), "--image", str(tmp_path / "b.nii.gz"),
            "--label", str(tmp_path / "b_seg.nii.gz"), "--label", str(tmp_path / "a_seg.nii.gz"),
            "--device", "cpu", "--depth", "1", "--out", str(tmp_path / "m.pt")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("napari-softseg train: error: b_seg.nii.gz is named after image b.nii.gz but is paired with "
                   "a.nii.gz; labels pair with images in order, so give them in the order of the images.")
    assert not (tmp_path / "m.pt").exists()
