"""npe2 sample data (File > Open Sample > SoftSeg)."""

from __future__ import annotations

from napari_softseg.plugin.layers import labels_layer, layers_for_volume, scan_layer, soft_layer
from napari_softseg.io.nifti import read_nifti
from napari_softseg.io.samples import sample_path


def sct_t2s() -> list[tuple]:
    """Cervical spinal cord T2* (LAS, 0.5x0.5x7.5 mm) with one expert's gray-matter mask."""
    scan = read_nifti(sample_path("sct_t2s", "t2s_uncropped.nii.gz"))
    mask = read_nifti(sample_path("sct_t2s", "t2s_uncropped_gmseg_manual.nii.gz"))
    return [scan_layer(scan, name="t2s"), labels_layer(mask, name="gm_expert")]


def brain_t1() -> list[tuple]:
    """Brain T1 after extraction (RAS, 1 mm) with FSL FAST soft gray/white-matter maps."""
    scan = read_nifti(sample_path("brain_t1", "bet.nii.gz"))
    gm = read_nifti(sample_path("brain_t1", "pve_1.nii.gz"))
    wm = read_nifti(sample_path("brain_t1", "pve_2.nii.gz"))
    return [scan_layer(scan, name="t1"), soft_layer(wm, name="wm_fast", opacity=0.5),
            soft_layer(gm, name="gm_fast", opacity=0.7)]


def isbi_raters() -> list[tuple]:
    """Two expert raters' MS lesion masks for one patient (LPS, 1 mm); no image is shipped."""
    out = []
    for r in (1, 2):
        vol = read_nifti(sample_path("isbi2015_raters", f"training01_rater{r}.nii.gz"))
        out += layers_for_volume(vol)
        out[-1][1]["name"] = f"rater{r}"
    return out


def lesion_phantom() -> list[tuple]:
    """FLAIR-like lesion phantom (1x1x3 mm) with its exact truth and four raters' masks."""
    from napari_softseg.io.phantom import RATER_STYLES, phantom_files

    files = phantom_files()
    image = read_nifti(files["image"])
    truth = read_nifti(files["truth"])
    layers = [scan_layer(image, name="phantom_flair")]
    for style in RATER_STYLES:
        rater = read_nifti(files[f"rater_{style}"])
        layer = labels_layer(rater, name=f"rater_{style}", opacity=0.4)
        layer[1]["visible"] = False
        layers.append(layer)
    layers.append(soft_layer(truth, name="truth_fraction", opacity=0.8))
    return layers
