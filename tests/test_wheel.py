"""An install outside the repository works: the wheel carries the sample data (with their
licences), the models and the manifest, and every sample and the lesion phantom open from it.

The wheel is built from a copy of the sources (nothing is written into the checkout),
installed with ``pip install --no-deps --target`` into a temporary folder, and used by a
fresh interpreter started outside the checkout with only that folder on ``PYTHONPATH``; the
child checks that the package it imported is the installed one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from _paths import REPO

pytestmark = pytest.mark.slow

CHILD = r'''
import json, os, sys
from pathlib import Path
import numpy as np

target = Path(sys.argv[1]).resolve()
import napari_softseg
where = Path(napari_softseg.__file__).resolve()
assert target in where.parents, f"imported {where}, not the installed copy"

from npe2 import PluginManager
pm = PluginManager.instance()
pm.discover()
manifest = pm.get_manifest("napari-softseg")
out = {"package": str(where), "samples": {}, "models": {}}
for contrib in manifest.contributions.sample_data:
    layers = pm.get_command(contrib.command).exec()
    out["samples"][contrib.key] = [
        [kw.get("name"), kind, list(np.shape(data)), kw.get("metadata", {}).get("source_path")]
        for data, kw, kind in layers]
from napari_softseg.engine.predict import SHIPPED_MODELS, load_model, resolve_model_path
for name in SHIPPED_MODELS:
    path = resolve_model_path(name)
    load_model(path)
    out["models"][name] = str(path)
from napari_softseg.io.samples import sample_dir
out["licences"] = sorted(str(p.relative_to(sample_dir())) for p in sample_dir().rglob("*")
                         if p.name.upper().startswith(("LICENSE", "LICENCE", "DESCRIPTION")))
print(json.dumps(out))
'''


def _sources(tmp: Path) -> Path:
    """A copy of what the wheel is built from (pyproject, README, the package)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "napari_softseg", src / "napari_softseg",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


def test_the_wheel_installed_elsewhere_opens_every_sample_and_the_phantom(tmp_path):
    src = _sources(tmp_path)
    dist, site, home = tmp_path / "dist", tmp_path / "site", tmp_path / "home"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
                   check=True, cwd=tmp_path, capture_output=True, timeout=120)
    wheel, = dist.glob("napari_softseg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for must in ("napari_softseg/napari.yaml", "napari_softseg/models/ms-lesion.pt", "napari_softseg/models/brain-gm.pt",
                 "napari_softseg/sample_data/LICENSES.md", "napari_softseg/sample_data/brain_t1/LICENSE",
                 "napari_softseg/sample_data/sct_t2s/LICENSE", "napari_softseg/sample_data/isbi2015_raters/LICENSE.txt",
                 "napari_softseg/sample_data/brain_t1/bet.nii.gz"):
        assert must in names, must
    subprocess.run(pip + ["install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                   check=True, cwd=tmp_path, capture_output=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NAPARI_SOFTSEG"))}
    env.update(PYTHONPATH=str(site), NAPARI_SOFTSEG_CACHE=str(home / "cache"), NAPARI_SOFTSEG_DATA=str(home / "data"),
               HOME=str(home), QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(site)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out["package"]).is_relative_to(site)
    samples = out["samples"]
    assert set(samples) == {"sct_t2s", "brain_t1", "isbi_raters", "lesion_phantom"}
    assert [s[:3] for s in samples["sct_t2s"]] == [["t2s", "image", [320, 320, 11]], ["gm_expert", "labels", [320, 320, 11]]]
    assert [s[0] for s in samples["brain_t1"]] == ["t1", "wm_fast", "gm_fast"]
    assert [s[2] for s in samples["brain_t1"]] == [[142, 178, 142]] * 3
    assert [s[0] for s in samples["isbi_raters"]] == ["rater1", "rater2"]
    phantom = {s[0]: s for s in samples["lesion_phantom"]}
    assert {"phantom_flair", "truth_fraction"} <= set(phantom) and len(phantom) >= 3
    for name, _, _, source in [s for layers in samples.values() for s in layers]:
        if source is not None:  # read from the installed copy or the phantom cache, never the checkout
            assert Path(source).is_relative_to(site) or Path(source).is_relative_to(home), (name, source)
    assert (home / "cache").exists()  # the phantom was built from the installed brain T1
    assert set(out["models"]) == {"ms-lesion", "brain-gm"}
    assert all(Path(p).is_relative_to(site) for p in out["models"].values())
    assert {"brain_t1/LICENSE", "sct_t2s/LICENSE", "isbi2015_raters/LICENSE.txt"} <= set(out["licences"])
