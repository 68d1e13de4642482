"""What every case of the catalogue checks, and the tiny files it works on.

A case runs a command (in this process, or in a child process for faults), then asserts:

* the exit status (2 for a user error, 130 for an interrupt, 0 for success);
* the exact sentence on stderr, one line, no traceback;
* that no input changed and nothing was half-written: a digest of every file of the folder
  (hidden files included, so a leftover temporary file shows) is compared before and after.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHAPE = (16, 16, 6)
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def digest(folder) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``folder`` (links: ``-> target``)."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[rel] = "<dir>"
    return out


def hidden(folder) -> list[str]:
    """Hidden files left in ``folder`` (temporary files of atomic writes are hidden)."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


@dataclass
class Run:
    status: int
    out: str
    err: str


def cli(capsys, *argv) -> Run:
    """Run ``napari-softseg ARGV`` in this process."""
    from napari_softseg.commands import main

    capsys.readouterr()
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return Run(status, captured.out, captured.err)


def refused(capsys, folder, argv, sentence: str, status: int = 2) -> Run:
    """Assert that ``napari-softseg ARGV`` refuses with exactly ``sentence`` and changes nothing in ``folder``."""
    before = digest(folder)
    run = cli(capsys, *argv)
    assert run.err == f"napari-softseg {argv[0]}: error: {sentence}\n", run.err
    assert run.status == status
    assert digest(folder) == before
    return run


def save(path, data, affine=AFFINE, dtype=None) -> Path:
    data = np.asarray(data)
    img = nib.Nifti1Image(data.astype(dtype or data.dtype), affine)
    img.header.set_qform(affine, code=1)
    nib.save(img, str(path))
    return Path(path)


def tiny_model(path, *, nan: str | None = None, arch: dict | None = None) -> Path:
    """An untrained one-contrast U-Net (depth 1, 4 features) saved as a checkpoint; ``nan``
    puts NaN ("nan") or infinity ("inf") in one weight, ``arch`` overrides the architecture."""
    import json

    import torch

    from napari_softseg.engine.checkpoint import FORMAT, make_config, save_checkpoint
    from napari_softseg.engine.model import UNet

    torch.manual_seed(0)
    model = UNet(1, 1, depth=1, base_features=4, dropout=0.1)
    config = make_config(model, contrasts=["flair"], threshold=0.5)
    if nan is None and arch is None:
        return save_checkpoint(path, model, config)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if nan is not None:
        key = next(k for k, v in state.items() if v.is_floating_point())
        state[key].view(-1)[0] = float(nan)
    if arch is not None:
        config["architecture"].update(arch)
    torch.save({"format": FORMAT, "config": json.dumps(config), "state_dict": state}, path)
    return Path(path)


@dataclass
class World:
    """The tiny files of the catalogue (16x16x6 voxels of 1x1x2 mm)."""

    folder: Path
    scan: Path
    scan2: Path
    a: Path
    b: Path
    soft: Path
    model: Path

    def copy(self, folder) -> "World":
        """The same files in another folder (for cases that add links or outputs)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for p in self.folder.iterdir():
            if p.is_file():
                shutil.copy2(p, folder / p.name)
        return World(**{k: folder / v.name if isinstance(v, Path) and k != "folder" else folder
                        for k, v in self.__dict__.items()})


def build_world(folder) -> World:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    scan = rng.normal(100.0, 20.0, SHAPE).astype(np.float32)
    a = np.zeros(SHAPE, np.uint8)
    a[4:10, 5:11, 1:5] = 1
    b = np.zeros(SHAPE, np.uint8)
    b[5:11, 5:12, 1:5] = 1
    soft = np.clip(a * 0.8 + rng.uniform(0, 0.2, SHAPE), 0, 1).astype(np.float32)
    return World(
        folder=folder,
        scan=save(folder / "scan.nii.gz", scan),
        scan2=save(folder / "scan2.nii.gz", scan * 0.5 + 3),
        a=save(folder / "a.nii.gz", a),
        b=save(folder / "b.nii.gz", b),
        soft=save(folder / "soft.nii.gz", soft),
        model=tiny_model(folder / "model.pt"),
    )
