"""The sane bounds of a network's architecture, checked before a network is built.

A checkpoint's configuration (:mod:`napari_softseg.engine.checkpoint`) and the ``train``
command's ``--depth``/``--features`` are checked against them, so that a damaged or
hand-edited file, or a typo, is refused in one sentence instead of exhausting the memory.
This module imports no torch, so the command line can check its settings at once.
"""

from __future__ import annotations

from napari_softseg.errors import UserError

#: Largest accepted value of each integer architecture setting (each at least 1).
ARCHITECTURE_LIMITS = {"in_channels": 64, "out_channels": 256, "depth": 8, "base_features": 256}
#: Largest accepted number of feature maps at the deepest level, ``base_features * 2**depth``.
MAX_WIDEST_LEVEL = 4096
_DEFAULTS = {"in_channels": 1, "out_channels": 1, "depth": 3, "base_features": 16}


def widest_level(depth: int, base_features: int) -> int:
    """Feature maps of the deepest level (the bottleneck) of a U-Net."""
    return int(base_features) * 2 ** int(depth)


def check_architecture(arch: dict, source: str = "checkpoint") -> None:
    """Refuse architecture settings outside :data:`ARCHITECTURE_LIMITS` (see the module docstring)."""
    values = {}
    for key, limit in ARCHITECTURE_LIMITS.items():
        value = arch.get(key, _DEFAULTS[key])
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise UserError(f"{source}: its architecture setting {key} = {value!r} is outside the sane range 1 to {limit}, "
                            "so the file is damaged or not a napari-softseg model.")
        values[key] = value
    widest = widest_level(values["depth"], values["base_features"])
    if widest > MAX_WIDEST_LEVEL:
        raise UserError(f"{source}: its architecture (depth {values['depth']}, {values['base_features']} base features) "
                        f"would have {widest} feature maps at its deepest level, more than the sane {MAX_WIDEST_LEVEL}.")
    dropout = arch.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise UserError(f"{source}: its dropout {dropout!r} must lie in [0, 1).")
