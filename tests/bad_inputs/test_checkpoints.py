"""Broken checkpoints are refused on load, before a network is built or anything predicted."""

from __future__ import annotations

import pytest

from bad_inputs.harness import refused, tiny_model
from napari_softseg.errors import UserError



def _n_weights() -> int:
    """Floating-point values of the tiny U-Net's state (weights and batch-norm statistics)."""
    from napari_softseg.engine.model import UNet

    state = UNet(1, 1, depth=1, base_features=4, dropout=0.1).state_dict()
    return sum(v.numel() for v in state.values() if v.is_floating_point())


N_WEIGHTS = _n_weights()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_weights_are_refused(tmp_path, value):
    from napari_softseg.engine.predict import load_model

    path = tiny_model(tmp_path / "broken.pt", nan=value)
    with pytest.raises(UserError) as info:
        load_model(path)
    assert str(info.value) == (f"broken.pt holds 1 NaN or infinite weight (of {N_WEIGHTS}), so its predictions "
                               "would be meaningless; it was not loaded.")


def test_nan_weights_on_the_command_line_give_no_output(capsys, own):
    bad = tiny_model(own.folder / "nan.pt", nan="nan")
    refused(capsys, own.folder, ["predict", "-q", "-m", bad, "-o", own.folder / "p.nii.gz", own.scan],
            f"nan.pt holds 1 NaN or infinite weight (of {N_WEIGHTS}), so its predictions would be meaningless; "
            "it was not loaded.")


def test_nan_weights_as_the_start_of_a_fine_tuning(capsys, own):
    bad = tiny_model(own.folder / "nan.pt", nan="nan")
    refused(capsys, own.folder, ["train", "--image", own.scan, "--label", own.a, "--init", bad, "--device", "cpu",
                                 "--out", own.folder / "m.pt"],
            f"nan.pt holds 1 NaN or infinite weight (of {N_WEIGHTS}), so its predictions would be meaningless; "
            "it was not loaded.")


ARCH = [
    ("depth", {"depth": 50},
     "absurd.pt: its architecture setting depth = 50 is outside the sane range 1 to 8, so the file is damaged or "
     "not a napari-softseg model."),
    ("features", {"base_features": 1_000_000},
     "absurd.pt: its architecture setting base_features = 1000000 is outside the sane range 1 to 256, so the file "
     "is damaged or not a napari-softseg model."),
    ("widest", {"depth": 8, "base_features": 256},
     "absurd.pt: its architecture (depth 8, 256 base features) would have 65536 feature maps at its deepest level, "
     "more than the sane 4096."),
    ("no_channels", {"in_channels": 0},
     "absurd.pt: its architecture setting in_channels = 0 is outside the sane range 1 to 64, so the file is "
     "damaged or not a napari-softseg model."),
    ("text_channels", {"out_channels": "3"},
     "absurd.pt: its architecture setting out_channels = '3' is outside the sane range 1 to 256, so the file is "
     "damaged or not a napari-softseg model."),
    ("dropout", {"dropout": 1.5}, "absurd.pt: its dropout 1.5 must lie in [0, 1)."),
]


@pytest.mark.parametrize("arch, sentence", [a[1:] for a in ARCH], ids=[a[0] for a in ARCH])
def test_an_absurd_architecture_is_refused_before_any_allocation(capsys, own, arch, sentence):
    path = tiny_model(own.folder / "absurd.pt", arch=arch)
    refused(capsys, own.folder, ["predict", "-q", "-m", path, "-o", own.folder / "p.nii.gz", own.scan], sentence)
