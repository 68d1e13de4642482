"""Checkpoint round trip, safe loading and clear errors."""

import errno
import json
import os
import pickle

import pytest
import torch

import napari_softseg
from napari_softseg.engine.checkpoint import FORMAT, build_model, load_checkpoint, make_config, save_checkpoint
from napari_softseg.errors import UserError
from napari_softseg.engine.model import UNet


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    model = UNet(depth=2, base_features=4, **kw)
    # make BN statistics non-trivial so that the round trip really covers buffers
    model.train()
    with torch.no_grad():
        model(torch.randn(4, model.in_channels, 16, 16))
    return model.eval()


def test_round_trip(tmp_path):
    model = _model(in_channels=2)
    config = make_config(
        model, preset="softseg", contrasts=["T1w", "FLAIR"], slice_axis=2,
        spacing=(0.5, 0.5, 3.0), crop_size=(64, 64), threshold=0.35,
        training={"epochs": 3, "best_val_loss": 0.12},
    )
    path = save_checkpoint(tmp_path / "m.pt", model, config)
    assert path == tmp_path / "m.pt"
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind
    state, cfg = load_checkpoint(path)
    assert cfg["architecture"] == model.config()
    assert cfg["contrasts"] == ["T1w", "FLAIR"] and cfg["n_channels"] == 2
    assert cfg["threshold"] == 0.35 and cfg["slice_axis"] == 2 and cfg["spacing"] == [0.5, 0.5, 3.0]
    assert cfg["crop_size"] == [64, 64] and cfg["normalisation"] == "zscore"
    assert cfg["version"] == napari_softseg.__version__ and cfg["training"]["epochs"] == 3
    json.dumps(cfg)
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key
    rebuilt = build_model(cfg, state)
    assert not rebuilt.training
    x = torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_wrapped_prefixes_are_removed(tmp_path):
    model = _model()
    wrapper = torch.nn.Module()
    wrapper.module = model  # what DistributedDataParallel looks like
    save_checkpoint(tmp_path / "w.pt", wrapper, make_config(model))
    state, cfg = load_checkpoint(tmp_path / "w.pt")
    build_model(cfg, state)
    assert all(not k.startswith("module.") for k in state)


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))  # would create a file when unpickled


def test_tampered_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    model = _model()
    config = json.dumps(make_config(model))
    # 1) a torch archive whose pickle carries an extra object
    evil = {"format": FORMAT, "config": config, "state_dict": model.state_dict(), "x": _Payload(str(marker))}
    torch.save(evil, tmp_path / "evil.pt")
    # the payload is real: an unrestricted load would run it
    assert not marker.exists()
    # 2) a bare pickle file
    with open(tmp_path / "evil.pkl", "wb") as fh:
        pickle.dump(_Payload(str(marker)), fh)
    for name in ("evil.pt", "evil.pkl"):
        with pytest.raises(UserError, match="refused"):
            load_checkpoint(tmp_path / name)
        assert not marker.exists()
    # sanity: the payload does what it says when unpickled without restrictions
    with open(tmp_path / "evil.pkl", "rb") as fh:
        pickle.load(fh).close()
    assert marker.exists()


def test_architecture_mismatch_is_one_clear_sentence(tmp_path):
    model = _model()
    config = make_config(model)
    config["architecture"] = dict(config["architecture"], depth=3)
    state = model.state_dict()
    with pytest.raises(UserError, match="do not match the architecture") as info:
        build_model(config, state, source="m.pt")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="contrasts"):
        make_config(model, contrasts=["a", "b"])


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken"])
def test_foreign_files(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(UserError):
        load_checkpoint(path)
    with pytest.raises(UserError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a napari-softseg model"):
        load_checkpoint(tmp_path / "other.pt")


def test_failed_save_leaves_old_file(tmp_path, monkeypatch):
    model = _model()
    path = save_checkpoint(tmp_path / "m.pt", model, make_config(model, threshold=0.4))
    before = path.read_bytes()

    def boom(*args, **kwargs):  # the disk fills up while the file is written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(UserError, match=r"^Cannot write m\.pt: the disk holding .* is full "):  # one sentence naming the file
        save_checkpoint(path, model, make_config(model, threshold=0.6))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]
