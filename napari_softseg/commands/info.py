"""``napari-softseg info``: what napari_softseg sees in a NIfTI file (and whether masks fit it)."""

from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("info", help="describe NIfTI files and check that masks lie on a scan's grid",
                              description=__doc__)
    p.add_argument("image", help="a .nii or .nii.gz file")
    p.add_argument("--mask", action="append", default=[], metavar="MASK",
                   help="a mask paired with IMAGE; it must share IMAGE's shape and affine (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=run)


def describe(vol) -> dict:
    import numpy as np

    meta = vol.geometry_metadata()
    data = vol.data
    return {
        "file": str(vol.path), "shape": list(data.shape), "dtype": str(data.dtype),
        "kind": vol.kind(), "orientation": meta["orientation"],
        "spacing_mm": [round(s, 4) for s in vol.spacing],
        "qform_code": meta["qform_code"], "sform_code": meta["sform_code"],
        "units": meta["units"], "min": float(np.min(data)), "max": float(np.max(data)),
        "affine": [[round(v, 5) for v in row] for row in meta["affine"]],
    }


def run(args) -> int:
    from napari_softseg.commands import read_input
    from napari_softseg.commands.interrupts import preload
    from napari_softseg.io.nifti import check_same_grid

    preload("numpy", "nibabel")
    vol = read_input(args.image)
    masks = [read_input(m) for m in args.mask]
    for m in masks:
        check_same_grid(vol, m)
    infos = [describe(v) for v in [vol, *masks]]
    if args.json:
        print(json.dumps(infos if masks else infos[0], indent=1))
        return 0
    for info in infos:
        print(f"{info['file']}")
        for key in ("shape", "dtype", "kind", "orientation", "spacing_mm", "qform_code", "sform_code", "min", "max"):
            print(f"  {key:12s} {info[key]}")
    if masks:
        print(f"{len(masks)} mask(s) lie on the grid of {vol.name}.")
    return 0
