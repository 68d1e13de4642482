"""``napari-softseg info``: what the plugin sees in a file, as text and as JSON, checked
against nibabel read directly."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_softseg.commands import main

from _paths import SHARED

T2S = SHARED / "sct_t2s" / "t2s_uncropped.nii.gz"
T2S_GM = SHARED / "sct_t2s" / "t2s_uncropped_gmseg_manual.nii.gz"
MT_GM = SHARED / "sct_mt" / "mt1_gmseg.nii.gz"


def nibabel_facts(path) -> dict:
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    return {
        "shape": list(img.shape), "dtype": str(img.get_data_dtype()),
        "orientation": "".join(nib.aff2axcodes(img.affine)),
        "spacing_mm": [round(float(s), 4) for s in np.linalg.norm(img.affine[:3, :3], axis=0)],
        "qform_code": int(img.header["qform_code"]), "sform_code": int(img.header["sform_code"]),
        "min": float(data.min()), "max": float(data.max()),
    }


def text_blocks(out: str) -> dict[str, dict[str, str]]:
    """``{file: {key: value}}`` of the text output (a path line, then indented key/value lines)."""
    blocks, current = {}, None
    for line in out.splitlines():
        if line.startswith("  ") and current is not None:
            key, _, value = line.strip().partition(" ")
            blocks[current][key] = value.strip()
        elif line and not line.startswith(" ") and "lie on the grid" not in line:
            current = line.strip()
            blocks[current] = {}
    return blocks


def test_info_text_describes_the_scan_and_checks_its_mask(capsys):
    assert main(["info", str(T2S), "--mask", str(T2S_GM)]) == 0
    out = capsys.readouterr().out
    blocks = text_blocks(out)
    assert list(blocks) == [str(T2S), str(T2S_GM)]
    for path, kind in ((T2S, "image"), (T2S_GM, "labels")):
        facts, shown = nibabel_facts(path), blocks[str(path)]
        assert shown["kind"] == kind  # 0..255 scan vs a 0/1 integer mask
        assert shown["shape"] == str(facts["shape"]) and shown["dtype"] == facts["dtype"]
        assert shown["orientation"] == facts["orientation"] == "LAS"
        assert json.loads(shown["spacing_mm"]) == pytest.approx(facts["spacing_mm"], abs=1e-4)
        assert (int(shown["qform_code"]), int(shown["sform_code"])) == (facts["qform_code"], facts["sform_code"]) == (2, 1)
        assert (float(shown["min"]), float(shown["max"])) == (facts["min"], facts["max"])
    assert out.strip().splitlines()[-1] == "1 mask(s) lie on the grid of t2s_uncropped."


def test_info_json_of_a_soft_map_and_of_a_scan_with_masks(capsys):
    assert main(["info", str(MT_GM), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    facts = nibabel_facts(MT_GM)
    assert doc["file"] == str(MT_GM) and doc["kind"] == "soft"  # float in [0, 1.1]: a soft map
    for key in ("shape", "dtype", "orientation", "qform_code", "sform_code"):
        assert doc[key] == facts[key], key
    assert doc["spacing_mm"] == pytest.approx(facts["spacing_mm"], abs=1e-4)
    assert doc["min"] == facts["min"] and doc["max"] == pytest.approx(facts["max"]) and 1.0 < doc["max"] < 1.1
    np.testing.assert_allclose(doc["affine"], nib.load(str(MT_GM)).affine, atol=1e-5)
    assert doc["units"] == list(nib.load(str(MT_GM)).header.get_xyzt_units())

    assert main(["info", str(T2S), "--mask", str(T2S_GM), "--json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [d["file"] for d in docs] == [str(T2S), str(T2S_GM)] and [d["kind"] for d in docs] == ["image", "labels"]


def test_info_refuses_a_mask_of_another_grid_in_one_sentence(capsys):
    assert main(["info", str(T2S), "--mask", str(MT_GM)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and err.count("\n") == 0 and "mt1_gmseg" in err and err.endswith(".")
