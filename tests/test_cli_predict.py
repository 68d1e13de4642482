"""`napari-softseg predict` writes NIfTI files with the source geometry."""

import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_softseg.engine.checkpoint import make_config, save_checkpoint
from napari_softseg.commands import main
from napari_softseg.engine.predict import load_model, predict_volume
from napari_softseg.engine.model import UNet
from napari_softseg.io.nifti import read_nifti

from _paths import SHARED

MT1 = SHARED / "sct_mt" / "mt1.nii.gz"  # _paths raises one clear error when the data folder is missing


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = UNet(1, 1, depth=2, base_features=4).eval()
    with torch.no_grad():
        model.head.bias -= model.forward_logits(torch.randn(4, 1, 40, 40)).mean()
    return save_checkpoint(tmp_path / "tiny.pt", model, make_config(model, contrasts=["MT"], threshold=0.4))


def test_predict_writes_soft_mask_and_entropy_with_source_affine(tmp_path, checkpoint, capsys):
    out = tmp_path / "soft.nii.gz"
    status = main(["predict", "--model", str(checkpoint), "-o", str(out), str(MT1),
                   "--threshold", "auto", "--uncertainty", "--mc-samples", "3"])
    assert status == 0
    src = nib.load(str(MT1))
    soft_img = nib.load(str(out))
    np.testing.assert_allclose(soft_img.affine, src.affine, atol=1e-6)
    assert soft_img.shape == src.shape == (40, 40, 5)
    assert soft_img.get_data_dtype() == np.float32
    assert "".join(nib.aff2axcodes(soft_img.affine)) == "LAS"
    soft = np.asarray(soft_img.dataobj)
    assert 0.0 <= soft.min() and soft.max() <= 1.0 and soft.max() > 0

    mask = np.asarray(nib.load(str(tmp_path / "soft_mask.nii.gz")).dataobj)
    np.testing.assert_array_equal(mask, (soft >= 0.4).astype(np.uint8))  # 'auto' = checkpoint's 0.4
    entropy_img = nib.load(str(tmp_path / "soft_entropy.nii.gz"))
    np.testing.assert_allclose(entropy_img.affine, src.affine, atol=1e-6)
    entropy = np.asarray(entropy_img.dataobj)
    assert entropy.shape == (40, 40, 5) and 0.0 <= entropy.min() and entropy.max() <= 1.0
    err = capsys.readouterr()
    assert "15/15" in err.err  # the progress bar reached the end: 5 slices x 3 draws
    assert str(out) in err.out


def test_predict_equals_python_api(tmp_path, checkpoint):
    out = tmp_path / "soft.nii"
    assert main(["predict", "-m", str(checkpoint), "-o", str(out), str(MT1), "-q", "--no-mixed-precision"]) == 0
    expected = predict_volume(load_model(checkpoint), read_nifti(MT1).data, spacing=read_nifti(MT1).spacing,
                              mixed_precision=False)
    np.testing.assert_allclose(np.asarray(nib.load(str(out)).dataobj), expected, atol=1e-6)


def test_predict_user_errors(tmp_path, checkpoint, capsys):
    out = str(tmp_path / "x.nii.gz")
    copy = tmp_path / "mt1b.nii.gz"
    shutil.copy(MT1, copy)
    assert main(["predict", "-m", str(checkpoint), "-o", out, str(MT1), str(copy)]) == 2
    assert "expects 1 contrast(s) (MT) but 2 image(s)" in capsys.readouterr().err
    assert main(["predict", "-m", str(checkpoint), "-o", out, str(MT1), "--threshold", "1.5"]) == 2
    assert main(["predict", "-m", "not-a-model", "-o", out, str(MT1)]) == 2
    assert "brain-gm" in capsys.readouterr().err
    assert main(["predict", "-m", str(checkpoint), "-o", str(tmp_path / "x.txt"), str(MT1)]) == 2
    assert not (tmp_path / "x.nii.gz").exists()


def test_predict_tta_uncertainty_and_custom_paths(tmp_path, checkpoint, capsys):
    out = tmp_path / "p.nii.gz"
    mask, ent = tmp_path / "m.nii.gz", tmp_path / "e.nii.gz"
    assert main(["predict", "-m", str(checkpoint), "-o", str(out), str(MT1), "--tta", "--uncertainty",
                 "--threshold", "0.5", "--mask-out", str(mask), "--entropy-out", str(ent)]) == 0
    assert "20/20" in capsys.readouterr().err  # 5 slices x 4 flipped views, no MC dropout with --tta
    soft = np.asarray(nib.load(str(out)).dataobj)
    np.testing.assert_array_equal(np.asarray(nib.load(str(mask)).dataobj), soft >= 0.5)
    p = soft.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.nan_to_num(p * np.log2(p)) + np.nan_to_num((1 - p) * np.log2(1 - p)))
    np.testing.assert_allclose(np.asarray(nib.load(str(ent)).dataobj), h, atol=1e-5)


def test_predict_with_the_shipped_model_by_name(phantom_paths, tmp_path, capsys):
    """README: MODEL is a checkpoint or a shipped model name; ``--threshold auto`` uses the
    model's optimised threshold (the one its model card gives)."""
    import json

    from napari_softseg.engine.predict import MODELS_DIR

    from _oracles import plain_network_prediction

    out, mask = tmp_path / "lesions.nii.gz", tmp_path / "lesions_mask.nii.gz"
    flair = str(phantom_paths["image"])
    assert main(["predict", "--model", "ms-lesion", "-o", str(out), flair, "--threshold", "auto", "-q"]) == 0
    src = nib.load(flair)
    soft_img = nib.load(str(out))
    np.testing.assert_allclose(soft_img.affine, src.affine, atol=1e-6)
    soft = np.asarray(soft_img.dataobj)
    some = list(range(2, 47, 9))
    expected = plain_network_prediction(load_model("ms-lesion"), np.asarray(src.dataobj, np.float32), axis=2, slices=some)
    np.testing.assert_allclose(soft[:, :, some], expected, atol=0.02)
    threshold = json.loads((MODELS_DIR / "ms-lesion.json").read_text())["threshold"]
    np.testing.assert_array_equal(np.asarray(nib.load(str(mask)).dataobj), (soft >= threshold).astype(np.uint8))
    truth = np.asarray(nib.load(str(phantom_paths["truth"])).dataobj)
    assert (soft >= threshold)[truth >= 0.5].mean() > 0.5  # it finds the phantom's lesions


def test_a_model_without_dropout_has_no_monte_carlo_samples(tmp_path, capsys):
    """A NormReLU network trained without dropout: --mc-samples is refused in one sentence,
    and --uncertainty alone uses the four flipped views instead of identical MC draws."""
    torch.manual_seed(0)
    model = UNet(1, 1, depth=2, base_features=4, dropout=0.0, norm_scope="batch").eval()
    with torch.no_grad():
        model.head.bias -= model.forward_logits(torch.randn(4, 1, 40, 40)).mean()
    model.activation.norm_max.fill_(0.05)
    path = save_checkpoint(tmp_path / "nodrop.pt", model, make_config(model, contrasts=["MT"]))
    out = tmp_path / "p.nii.gz"
    assert main(["predict", "-m", str(path), "-o", str(out), str(MT1), "--mc-samples", "3"]) == 2
    err = capsys.readouterr().err
    assert "trained without dropout, so its Monte-Carlo dropout samples would all be the same prediction" in err
    assert not out.exists()
    assert main(["predict", "-m", str(path), "-o", str(out), str(MT1), "--uncertainty", "--no-mixed-precision"]) == 0
    assert "20/20" in capsys.readouterr().err  # 5 slices x 4 flipped views
    tta = predict_volume(load_model(path), read_nifti(MT1).data, spacing=read_nifti(MT1).spacing, tta=4,
                         mixed_precision=False)
    np.testing.assert_allclose(np.asarray(nib.load(str(out)).dataobj), tta.soft, atol=1e-6)
