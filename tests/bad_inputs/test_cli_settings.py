"""Shared settings are validated alike by every command, before any work."""

from __future__ import annotations

import pytest

from bad_inputs.harness import refused

# (command and its options without inputs/outputs, the exact sentence)
FUSE = [
    (["--threshold", "1.5"], "--threshold must lie strictly between 0 and 1, got 1.5."),
    (["--threshold", "-1"], "--threshold must lie strictly between 0 and 1, got -1."),
    (["--threshold", "0"], "--threshold must lie strictly between 0 and 1, got 0."),
    (["--threshold", "nan"], "--threshold must lie strictly between 0 and 1, got nan."),
    (["--tol", "-1"], "--tol must be a number greater than 0, got -1."),
    (["--tol", "0"], "--tol must be a number greater than 0, got 0."),
    (["--max-iter", "0"], "--max-iter must be at least 1, got 0."),
    (["--prior", "1.2"], "--prior must lie strictly between 0 and 1, got 1.2."),
    (["--n-classes", "1"], "--n-classes must be between 2 and 256, got 1."),
    (["-m", "average", "--tol", "0.1"], "--tol applies to STAPLE, not to the average method."),
]


@pytest.mark.parametrize("options, sentence", FUSE, ids=[" ".join(o) for o, _ in FUSE])
def test_fuse_settings(capsys, world, options, sentence):
    refused(capsys, world.folder, ["fuse", *options, "-o", world.folder / "f.nii.gz", world.a, world.b], sentence)


EVALUATE = [
    (["--threshold", "1"], "--threshold must lie strictly between 0 and 1, got 1."),
    (["--threshold", "1.5"], "--threshold must lie strictly between 0 and 1, got 1.5."),
    (["--min-overlap", "-3"], "--min-overlap must be at least 1, got -3."),
    (["--min-overlap", "0"], "--min-overlap must be at least 1, got 0."),
]


@pytest.mark.parametrize("options, sentence", EVALUATE, ids=[" ".join(o) for o, _ in EVALUATE])
def test_evaluate_settings(capsys, world, options, sentence):
    refused(capsys, world.folder, ["evaluate", "--pred", world.soft, "--truth", world.a, *options], sentence)


PREDICT = [
    (["-t", "1.5"], "--threshold must lie strictly between 0 and 1, got 1.5."),
    (["-t", "0"], "--threshold must lie strictly between 0 and 1, got 0."),
    (["-t", "half"], "--threshold must be a number between 0 and 1 or 'auto', got 'half'."),
    (["--mc-samples", "-1"], "--mc-samples must be at least 0, got -1."),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0."),
    (["--entropy-out", "e.nii.gz"], "--entropy-out names the map written with --uncertainty; give --uncertainty too."),
]


@pytest.mark.parametrize("options, sentence", PREDICT, ids=[" ".join(o) for o, _ in PREDICT])
def test_predict_settings(capsys, world, options, sentence):
    refused(capsys, world.folder, ["predict", "-m", world.model, *options, "-o", world.folder / "p.nii.gz", world.scan],
            sentence)


TRAIN = [
    (["--epochs", "0"], "--epochs must be at least 1, got 0."),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0."),
    (["--patience", "-2"], "--patience must be at least 1, got -2."),
    (["--depth", "50"], "--depth must be between 1 and 8, got 50."),
    (["--features", "100000"], "--features must be between 1 and 256, got 100000."),
    (["--depth", "8", "--features", "256"],
     "--depth 8 with --features 256 gives 65536 feature maps at the deepest level, more than 4096; lower one of them."),
    (["--lr", "-1"], "--lr must be a number greater than 0, got -1."),
    (["--lr", "inf"], "--lr must be a number greater than 0, got inf."),
    (["--dropout", "1.5"], "--dropout must lie in [0, 1), got 1.5."),
    (["--val-fraction", "1"], "--val-fraction must lie in [0, 1), got 1."),
    (["--threads", "0"], "--threads must be at least 1, got 0."),
    (["--seed", "-1"], "--seed must be at least 0, got -1."),
    (["--crop", "abc"], "--crop 'abc' is not a size like 128 or 160x192."),
    (["--patch", "0x64"], "--patch '0x64' is not a size like 128 or 160x192."),
]


@pytest.mark.parametrize("options, sentence", TRAIN, ids=[" ".join(o) for o, _ in TRAIN])
def test_train_settings(capsys, world, options, sentence):
    refused(capsys, world.folder, ["train", "--image", world.scan, "--label", world.a, *options,
                                   "--out", world.folder / "m.pt"], sentence)


def test_train_init_takes_a_shipped_model_name_like_predict(capsys, own):
    """``--init ms-lesion`` is resolved (as ``predict -m ms-lesion``): the run gets as far as
    comparing the model's one contrast with the two of a 4-D scan."""
    import numpy as np

    from bad_inputs.harness import save
    from napari_softseg.engine.predict import resolve_model_path
    from napari_softseg.io.nifti import read_nifti

    try:
        resolve_model_path("ms-lesion")
    except Exception:  # noqa: BLE001
        pytest.skip("the shipped ms-lesion model is not installed here")
    two = save(own.folder / "two.nii.gz", np.stack([read_nifti(own.scan).data, read_nifti(own.scan2).data], axis=-1))
    refused(capsys, own.folder, ["train", "--image", two, "--label", own.a, "--init", "ms-lesion", "--epochs", "1",
                                 "--device", "cpu", "--out", own.folder / "m.pt"],
            "ms-lesion.pt takes 1 contrasts but the training images have 2.")


@pytest.mark.parametrize("command", ["predict", "train"])
def test_unknown_model_names(capsys, world, command):
    sentence = "Unknown model 'ms-lesions': give a checkpoint file or one of the shipped models ms-lesion, brain-gm."
    if command == "predict":
        argv = ["predict", "-m", "ms-lesions", "-o", world.folder / "p.nii.gz", world.scan]
    else:
        argv = ["train", "--image", world.scan, "--label", world.a, "--init", "ms-lesions", "--out", world.folder / "m.pt"]
    refused(capsys, world.folder, argv, sentence)
