"""The README's Python section, run as written: the top-level names, the snippet on the
lesion phantom, and training from Python. Values are checked against nibabel, SimpleITK,
a plain forward pass of the network and hand-computed numbers."""

from __future__ import annotations

import json
import math
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_softseg.engine.predict import MODELS_DIR

from _oracles import itk_staple, plain_network_prediction
from _paths import REPO, SHARED

README_NAMES = ["read_nifti", "write_nifti", "load_model", "predict_volume", "fuse", "staple",
                "UNet", "NormReLU", "AdaptiveWingLoss", "DiceLoss", "PRESETS"]


def readme_python_block() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_snippet_runs_on_the_phantom(phantom_paths, tmp_path, monkeypatch):
    code = readme_python_block()
    imported = re.findall(r"from napari_softseg import (.+)", code)
    assert sorted(n.strip() for line in imported for n in line.split(",")) == sorted(README_NAMES)
    shutil.copy(phantom_paths["image"], tmp_path / "flair.nii.gz")
    raters = [nib.load(str(phantom_paths[f"rater_{s}"])).get_fdata().astype(np.uint8)
              for s in ("conservative", "generous", "jitter")]
    monkeypatch.chdir(tmp_path)
    ns = {"r1": raters[0], "r2": raters[1], "r3": raters[2]}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - the documented snippet itself

    src = nib.load(str(tmp_path / "flair.nii.gz"))
    scan = ns["scan"]
    assert scan.data.shape == src.shape == (142, 178, 47)
    np.testing.assert_array_equal(scan.data, np.asarray(src.dataobj))  # on-disk axis order
    np.testing.assert_allclose(scan.affine, src.affine, atol=1e-6)

    model = ns["model"]
    assert isinstance(model, ns["UNet"]) and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.softseg_config["contrasts"] == ["FLAIR"] and model.softseg_config["threshold"] == json.loads((MODELS_DIR / "ms-lesion.json").read_text())["threshold"]

    soft = ns["soft"]
    assert soft.dtype == np.float32 and soft.shape == scan.data.shape
    assert soft.min() >= 0.0 and soft.max() <= 1.0
    some = list(range(2, 47, 9))  # five slices through the lesions: the plain network is slow
    expected = plain_network_prediction(model, scan.data.astype(np.float32), axis=2, slices=some)
    np.testing.assert_allclose(soft[:, :, some], expected, atol=0.02)

    written = nib.load(str(tmp_path / "soft.nii.gz"))
    np.testing.assert_allclose(written.affine, src.affine, atol=1e-6)
    for key in ("qform_code", "sform_code"):
        assert int(written.header[key]) == int(src.header[key])
    assert written.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(written.dataobj), soft)
    assert not [p.name for p in tmp_path.iterdir() if p.name not in ("flair.nii.gz", "soft.nii.gz")]  # atomic

    result = ns["result"]
    post, sens, spec, _ = itk_staple(raters)
    np.testing.assert_allclose(result.soft, post, atol=1e-5)
    clear = np.abs(post - 0.5) > 1e-4
    np.testing.assert_array_equal(result.hard[clear], (post >= 0.5)[clear])
    np.testing.assert_allclose(result.sensitivity, sens, atol=1e-6)
    np.testing.assert_allclose(result.specificity, spec, atol=1e-6)
    np.testing.assert_allclose(ns["staple"](raters).posterior, post, atol=1e-5)


def test_the_model_and_loss_classes_compute_their_formulas():
    import napari_softseg as ss

    # NormReLU: ReLU divided by the maximum of each sample and channel
    x = torch.tensor([[[-1.0, 2.0, 4.0]], [[-3.0, -1.0, 0.0]]])
    np.testing.assert_allclose(ss.NormReLU()(x).numpy(), [[[0.0, 0.5, 1.0]], [[0.0, 0.0, 0.0]]])
    # Adaptive Wing (unweighted), non-linear branch: omega ln(1 + (delta / eps)^(alpha - y))
    loss = ss.AdaptiveWingLoss(foreground_weight=0.0)
    pred, target = torch.full((1, 1, 1, 1), 0.25), torch.zeros((1, 1, 1, 1))
    assert float(loss(pred, target)) == pytest.approx(8.0 * math.log1p(0.25**2.1), rel=1e-6)
    assert float(loss(target, target)) == 0.0
    # Dice loss without smoothing: 1 - 2 |P T| / (|P| + |T|)
    p, t = torch.tensor([[[1.0, 0.0, 1.0, 0.0]]]), torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
    assert float(ss.DiceLoss(smooth=0.0)(p, t)) == pytest.approx(0.5)
    # a U-Net with the SoftSeg output keeps the slice size and ends in NormReLU
    torch.manual_seed(0)
    net = ss.UNet(1, 1, depth=2, base_features=4).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 1, 16, 16) and float(out.min()) >= 0.0
    assert all(float(o.max()) in (0.0, 1.0) for o in out)
    # the presets named in the README's command line
    assert set(ss.PRESETS) == {"softseg", "conventional", "hard-relu-wing", "soft-relu-dice", "soft-sig-wing",
                               "multiclass-softmax-dice", "multiclass-softseg"}
    assert (ss.PRESETS["softseg"].activation, ss.PRESETS["conventional"].activation) == ("normrelu", "sigmoid")


@pytest.mark.slow
def test_training_from_python_is_a_generator_of_progress_events(tmp_path):
    """README: train(TrainConfig(...), TrainingData.from_nifti(...)) yields progress events."""
    from napari_softseg.engine.checkpoint import load_checkpoint
    from napari_softseg.engine.training.config import TrainConfig, TrainEvent
    from napari_softseg.engine.training.data import TrainingData
    from napari_softseg.engine.training.train import train

    data = TrainingData.from_nifti([SHARED / "sct_mt" / "mt1.nii.gz"], [SHARED / "sct_mt" / "mt1_gmseg.nii.gz"])
    config = TrainConfig(epochs=1, batch_size=2, crop_size=(32, 32), depth=2, base_features=4, val_fraction=0.2,
                         device="cpu", mixed_precision=False)
    events = list(train(config, data, checkpoint_path=tmp_path / "m.pt"))
    assert all(isinstance(e, TrainEvent) for e in events)
    kinds = [e.kind for e in events]
    assert kinds.index("start") < kinds.index("epoch") and kinds[-1] == "done" and events[-1].status == "completed"
    assert [e.epoch for e in events if e.kind == "epoch"] == [1]
    _, cfg = load_checkpoint(tmp_path / "m.pt")
    assert [h["epoch"] for h in cfg["training"]["history"]] == [1]
