"""Checkpoints: one file holding the weights and a JSON configuration.

File format
-----------
A ``torch.save`` archive of a plain dict with only tensors and strings::

    {"format": "napari-softseg-checkpoint",
     "config": "<JSON text>",              # see CONFIG SCHEMA below
     "state_dict": {name: tensor, ...}}    # UNet.state_dict(), CPU, contiguous

Loading uses ``torch.load(weights_only=True)``: its restricted unpickler accepts tensors and
primitive containers only, so a tampered file carrying a pickle payload (any other global)
is refused with a :class:`~napari_softseg.errors.UserError` **before** anything runs.
A loaded checkpoint is also checked for sanity before a network is built from it: every
weight finite (a NaN or infinite weight would make every prediction meaningless, e.g. an
all-zero map), and the architecture within :data:`ARCHITECTURE_LIMITS` (an absurd depth or
width in a damaged or hand-edited config would exhaust the memory;
:mod:`napari_softseg.engine.limits`).
Saving is atomic (temporary file in the same folder, then ``os.replace``).

Config schema (all keys JSON types)
-----------------------------------
``format_version`` int (1); ``version`` str (``napari_softseg.__version__`` that wrote it);
``architecture`` dict (``UNet.config()``: in_channels, out_channels, depth, base_features,
dropout, activation, and for ``normrelu`` ``norm_scope``: ``"batch"`` networks carry their
stored output normaliser ``activation.norm_max`` in the weights and are refused without a
finite positive one; a checkpoint without ``norm_scope`` -- every one written before it
existed, the shipped models included -- is ``"slice"`` and predicts exactly as before, see
:class:`~napari_softseg.engine.model.NormReLU`); ``preset`` str (key of ``PRESETS``); ``contrasts`` list[str] (one
name per input channel, in order); ``n_channels`` int (= len(contrasts) = in_channels);
``classes`` list[str] (foreground structures, background excluded); ``normalisation`` str
(``"zscore"``: each contrast of each volume to zero mean, unit variance, over the whole
volume); ``slice_axis`` int 0/1/2 or null (null: the axis with the largest voxel size, ties
to the last); ``spacing`` list of 3 floats or null (training voxel size, mm, array order);
``crop_size`` [H, W] or null (training in-plane size); ``threshold`` float in (0, 1)
(binarisation threshold chosen after training); ``training`` dict (free-form summary:
epochs, best validation loss, data, seed, device ...).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from napari_softseg.errors import UserError
from napari_softseg.io.atomic import write_bytes_atomic
from napari_softseg.engine.limits import check_architecture
from napari_softseg.engine.model import ACTIVATIONS, NORM_SCOPES, UNet

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "NORMALISATIONS",
    "save_checkpoint",
    "load_checkpoint",
    "build_model",
    "make_config",
    "validate_config",
]

FORMAT = "napari-softseg-checkpoint"
FORMAT_VERSION = 1
#: supported intensity normalisations ("zscore": :func:`napari_softseg.engine.preprocess.apply_zscore`).
NORMALISATIONS = ("zscore", "none")
_STRIP_PREFIXES = ("module.", "_orig_mod.")


def make_config(
    model: UNet,
    *,
    preset: str = "softseg",
    contrasts: list[str] | None = None,
    classes: list[str] | None = None,
    normalisation: str = "zscore",
    slice_axis: int | None = None,
    spacing: list[float] | tuple[float, ...] | None = None,
    crop_size: list[int] | tuple[int, int] | None = None,
    threshold: float = 0.5,
    training: dict | None = None,
) -> dict:
    """A complete, validated checkpoint config for ``model`` (see the module docstring)."""
    from napari_softseg import __version__

    contrasts = list(contrasts) if contrasts else [f"contrast{i}" for i in range(model.in_channels)]
    n_fg = model.n_structures
    config = {
        "format_version": FORMAT_VERSION,
        "version": __version__,
        "architecture": model.config(),
        "preset": preset,
        "contrasts": contrasts,
        "n_channels": len(contrasts),
        "classes": list(classes) if classes else [f"class{i + 1}" for i in range(max(n_fg, 1))],
        "normalisation": normalisation,
        "slice_axis": None if slice_axis is None else int(slice_axis),
        "spacing": None if spacing is None else [float(s) for s in spacing],
        "crop_size": None if crop_size is None else [int(s) for s in crop_size],
        "threshold": float(threshold),
        "training": dict(training or {}),
    }
    return validate_config(config)


def validate_config(config: dict, source: str = "checkpoint") -> dict:
    """Check a config's keys and types; return a copy with defaults filled in.

    Raises :class:`UserError` naming ``source`` for anything inconsistent.
    """
    if not isinstance(config, dict):
        raise UserError(f"{source}: its configuration is not a JSON object.")
    cfg = dict(config)
    arch = cfg.get("architecture")
    if not isinstance(arch, dict):
        raise UserError(f"{source}: its configuration lacks the network architecture.")
    allowed = {"in_channels", "out_channels", "depth", "base_features", "dropout", "activation", "norm_scope"}
    unknown = set(arch) - allowed
    if unknown:
        raise UserError(f"{source}: unknown architecture settings {sorted(unknown)}.")
    if arch.get("activation", "normrelu") not in ACTIVATIONS:
        raise UserError(f"{source}: unknown activation {arch.get('activation')!r}.")
    scope = arch.get("norm_scope", "slice")
    if scope not in NORM_SCOPES or (scope != "slice" and arch.get("activation", "normrelu") != "normrelu"):
        raise UserError(f"{source}: unknown output normalisation scope {scope!r} for its {arch.get('activation', 'normrelu')} "
                        f"activation (expected {' or '.join(NORM_SCOPES)} with normrelu).")
    check_architecture(arch, source)
    in_ch = int(arch.get("in_channels", 1))
    contrasts = cfg.get("contrasts") or [f"contrast{i}" for i in range(in_ch)]
    if not isinstance(contrasts, list) or not all(isinstance(c, str) for c in contrasts):
        raise UserError(f"{source}: 'contrasts' must be a list of names.")
    if len(contrasts) != in_ch:
        raise UserError(f"{source}: it names {len(contrasts)} contrasts but the network takes {in_ch} input channels.")
    cfg["contrasts"] = contrasts
    cfg["n_channels"] = in_ch
    cfg.setdefault("format_version", FORMAT_VERSION)
    cfg.setdefault("version", "unknown")
    cfg.setdefault("preset", "softseg")
    cfg.setdefault("classes", ["class1"])
    cfg.setdefault("normalisation", "zscore")
    if cfg["normalisation"] not in NORMALISATIONS:
        raise UserError(f"{source}: unknown normalisation {cfg['normalisation']!r} (expected one of {', '.join(NORMALISATIONS)}).")
    axis = cfg.setdefault("slice_axis", None)
    if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool) or axis not in (0, 1, 2)):
        raise UserError(f"{source}: slice_axis must be 0, 1, 2 or null, got {axis!r}.")
    cfg.setdefault("spacing", None)
    cfg.setdefault("crop_size", None)
    threshold = cfg.setdefault("threshold", 0.5)
    if not isinstance(threshold, (int, float)) or not 0.0 < float(threshold) < 1.0:
        raise UserError(f"{source}: threshold must lie strictly between 0 and 1, got {threshold!r}.")
    cfg["threshold"] = float(threshold)
    cfg.setdefault("training", {})
    return cfg


def _check_finite_weights(state: dict[str, torch.Tensor], name: str) -> None:
    """Refuse weights holding NaN or infinite values."""
    bad = total = 0
    for value in state.values():
        if value.is_floating_point() or value.is_complex():
            finite = torch.isfinite(value)
            bad += int(value.numel() - int(finite.sum()))
            total += value.numel()
    if bad:
        raise UserError(f"{name} holds {bad} NaN or infinite weight{'s' if bad > 1 else ''} (of {total}), "
                        "so its predictions would be meaningless; it was not loaded.")


def _clean_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        for prefix in _STRIP_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value.detach().to("cpu", copy=True).contiguous()
    return out


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, config: dict) -> Path:
    """Write ``model``'s weights and ``config`` to ``path`` atomically; return the path.

    ``model`` may be wrapped (DistributedDataParallel ``module.`` or ``torch.compile``
    ``_orig_mod.`` prefixes are removed). ``config`` must be JSON-serialisable (use
    :func:`make_config`); it is validated against the architecture before writing.
    """
    path = Path(path)
    cfg = validate_config(config, path.name)
    try:
        text = json.dumps(cfg, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"checkpoint config is not JSON-serialisable: {err}") from None
    payload = {"format": FORMAT, "config": text, "state_dict": _clean_state_dict(model.state_dict())}
    buffer = io.BytesIO()  # serialised first: torch's zip writer hides a failed file write behind its own error
    torch.save(payload, buffer)
    return write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint safely; return ``(state_dict, config)``.

    Never unpickles arbitrary objects (``weights_only=True``); a file carrying anything but
    tensors and plain containers is refused with a :class:`UserError`, as are missing,
    truncated or foreign files.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise UserError(f"{name}: no such model file." if not path.exists() else f"{name} is not a file.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"{name} was refused: it contains objects other than tensors and plain data "
            f"(possibly tampered with), so it was not loaded ({_first_line(err)})."
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, AttributeError) as err:
        raise UserError(f"{name} is not a readable napari-softseg model ({_first_line(err)}).") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{name} is not a napari-softseg model (no '{FORMAT}' marker).")
    text, state = payload.get("config"), payload.get("state_dict")
    if not isinstance(text, str) or not isinstance(state, dict):
        raise UserError(f"{name} is an incomplete napari-softseg model (config or weights missing).")
    try:
        config = json.loads(text)
    except json.JSONDecodeError:
        raise UserError(f"{name}: its configuration is not valid JSON.") from None
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{name}: its weights are not a mapping of names to tensors.")
    config = validate_config(config, name)
    _check_finite_weights(state, name)
    return state, config


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:160]


def _check_normaliser(model: UNet, state: dict[str, torch.Tensor], source: str) -> None:
    """A "batch" NormReLU network predicts with its stored normaliser: refuse one without a
    finite positive value (a network saved before it was fitted, or a hand-edited file)."""
    if getattr(model.activation, "scope", "slice") != "batch":
        return
    m = state.get("activation.norm_max")
    if m is None or m.numel() != model.out_channels or not bool(torch.isfinite(m).all()) or not bool((m > 0).all()):
        raise UserError(f"{source}: its output is normalised by a stored maximum that it lacks (no finite positive "
                        "activation.norm_max), so it cannot predict; train it again.")


def build_model(config: dict, state_dict: dict[str, torch.Tensor] | None = None, *, source: str = "checkpoint") -> UNet:
    """Build the :class:`UNet` described by ``config["architecture"]`` (float32, eval mode).

    With ``state_dict`` the weights are loaded strictly; a mismatch (other depth, feature
    count, channels) raises a one-sentence :class:`UserError`.
    """
    cfg = validate_config(config, source)
    arch: dict[str, Any] = dict(cfg["architecture"])
    model = UNet(**arch)  # no "norm_scope": "slice", what every checkpoint without it was trained with
    if state_dict is not None:
        state = _clean_state_dict(state_dict)
        _check_normaliser(model, state, source)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
        if missing or unexpected or wrong:
            detail = (
                f"{len(missing)} missing, {len(unexpected)} unexpected and {len(wrong)} mis-shaped tensors"
                + (f", e.g. {(missing or unexpected or wrong)[0]}" if (missing or unexpected or wrong) else "")
            )
            raise UserError(
                f"{source}: its weights do not match the architecture it declares "
                f"(depth {arch.get('depth', 3)}, {arch.get('base_features', 16)} base features): {detail}."
            )
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.float().eval()
