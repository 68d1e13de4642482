"""napari_softseg: annotate, fuse, train and review soft segmentations in napari.

The public names are imported lazily so that ``import napari_softseg`` stays fast and never
pulls in torch or Qt until they are needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY = {
    "read_nifti": "io.nifti",
    "write_nifti": "io.nifti",
    "NiftiVolume": "io.nifti",
    "UserError": "errors",
    "AdaptiveWingLoss": "engine.losses",
    "DiceLoss": "engine.losses",
    "NormReLU": "engine.model",
    "UNet": "engine.model",
    "PRESETS": "engine.presets",
    "staple": "fusion.staple",
    "fuse": "fusion.methods",
    "load_model": "engine.predict",
    "predict_volume": "engine.predict",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'napari_softseg' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
