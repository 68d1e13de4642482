"""What a model declares for review: what it segments and how its lesions are flagged.

A checkpoint may carry, in its JSON config, a ``"review"`` entry::

    {"review": {"target": "lesions" | "tissue",
                "flags": {...}}}          # a FlagModel (napari_softseg.review.flags), fitted
                                          # by scripts/fit_flags.py for this model

Each of the two is looked up in this order (:func:`review_profile`):

1. the checkpoint's config (``scripts/fit_flags.py --model M`` writes it there);
2. a **sidecar** file next to the checkpoint, ``<name>.review.json`` with the same keys
   (the shipped models have one, so that their weights stay untouched; ``fit_flags.py
   --sidecar`` writes it). A sidecar records the SHA-256 of the checkpoint it was written
   for; for another file its flag fit is still used but labelled as fitted for another
   version;
3. a default:

   * **target** of a model that does not declare one: "lesions" when one of its class names
     names lesions (:data:`LESION_WORDS`), else decided on its first prediction: "tissue"
     when the mask at the model's threshold covers more than :data:`TISSUE_COVERAGE` of the
     scan's non-zero voxels (lesion loads are far below it, a tissue like grey matter is
     20–50 % of the brain), "lesions" otherwise (:func:`decide_target`);
   * **flags**: the fit of the shipped ``ms-lesion`` model, labelled as such (its features
     are probabilities, volumes and sample agreement, so it ranks another lesion model's
     lesions sensibly, but its operating point is that model's: refit for yours).

Old checkpoints (no ``"review"`` entry) keep working through 2 and 3.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from napari_softseg.review.flags import FlagModel
from napari_softseg.review.session import TARGETS

CONFIG_KEY = "review"
SIDECAR_SUFFIX = ".review.json"
#: class-name fragments that make an undeclared model a lesion model
LESION_WORDS = ("lesion", "tumour", "tumor", "metasta", "nodule", "plaque", "hyperintens")
#: mask share of the scan's non-zero voxels above which an undeclared model is a tissue model
TISSUE_COVERAGE = 0.02
DEFAULT_FLAGS_MODEL = "ms-lesion"


@dataclass
class ReviewProfile:
    """A model's review settings and where each came from (in words)."""

    target: str | None  # None: decided on the first prediction (decide_target)
    target_source: str
    flags: FlagModel | None
    flags_source: str


def sidecar_path(checkpoint) -> Path:
    """``<checkpoint without .pt>.review.json``."""
    path = Path(checkpoint)
    return path.with_name(path.name[: -len(path.suffix)] + SIDECAR_SUFFIX if path.suffix else path.name + SIDECAR_SUFFIX)


def file_sha256(path) -> str:
    """SHA-256 of a file, read once per version of it (path, size and modification time): the
    Segment dock asks again at every change of its sampling settings."""
    stat = Path(path).stat()
    return _sha256_of(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=32)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_sidecar(checkpoint) -> dict:
    """The sidecar's content ({} when there is none or it cannot be read)."""
    path = sidecar_path(checkpoint)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def review_profile(config: dict | None, checkpoint=None) -> ReviewProfile:
    """Target and flag model of a model (see the module docstring)."""
    declared = (config or {}).get(CONFIG_KEY) or {}
    side = read_sidecar(checkpoint) if checkpoint is not None else {}
    target, target_source = _target(declared, side, config or {})
    flags, flags_source = _flags(declared, side, checkpoint)
    return ReviewProfile(target, target_source, flags, flags_source)


def _target(declared: dict, side: dict, config: dict) -> tuple[str | None, str]:
    for doc, where in ((declared, "declared by the checkpoint"), (side, "declared by its sidecar file")):
        if doc.get("target") in TARGETS:
            return doc["target"], where
    classes = " ".join(str(c) for c in config.get("classes") or []).lower()
    if any(word in classes for word in LESION_WORDS):
        return "lesions", "its class names name lesions"
    return None, "not declared: decided on the prediction"


def _flags(declared: dict, side: dict, checkpoint) -> tuple[FlagModel | None, str]:
    for doc, where in ((declared, "fitted for this model (stored in the checkpoint)"),
                       (side, "fitted for this model (sidecar file)")):
        if isinstance(doc.get("flags"), dict):
            try:
                flags = FlagModel.from_dict(doc["flags"])
            except (ValueError, KeyError, TypeError):
                continue
            if doc is side and side.get("model_sha256") and checkpoint is not None and Path(checkpoint).is_file() \
                    and side["model_sha256"] != file_sha256(checkpoint):
                where = "fitted for another version of this model file (sidecar): refit with scripts/fit_flags.py"
            return flags, where
    flags = default_flags()
    if flags is None:
        return None, "none (no flag model is installed)"
    return flags, f"default: fitted for the shipped {DEFAULT_FLAGS_MODEL} model; refit for this model with scripts/fit_flags.py"


def default_flags() -> FlagModel | None:
    """The flag model of the shipped ``ms-lesion`` model (its sidecar), or None."""
    from napari_softseg.engine.predict import MODELS_DIR

    doc = read_sidecar(MODELS_DIR / f"{DEFAULT_FLAGS_MODEL}.pt")
    try:
        return FlagModel.from_dict(doc["flags"]) if isinstance(doc.get("flags"), dict) else None
    except (ValueError, KeyError, TypeError):
        return None


def decide_target(target: str | None, mask_voxels: int, image_nonzero: int) -> str:
    """The declared target, else "tissue" when the mask covers more than
    :data:`TISSUE_COVERAGE` of the scan's non-zero voxels, else "lesions"."""
    if target is not None:
        return target
    return "tissue" if image_nonzero and mask_voxels > TISSUE_COVERAGE * image_nonzero else "lesions"


def store_review_metadata(checkpoint, *, target: str | None = None, flags: FlagModel | None = None,
                          sidecar: bool = False) -> Path:
    """Write ``target`` and/or ``flags`` into the checkpoint's config (weights unchanged) or,
    with ``sidecar=True``, into its sidecar file (other keys kept); returns the file written."""
    from napari_softseg.io.atomic import write_text_atomic

    if target is not None and target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    entry = {k: v for k, v in (("target", target), ("flags", flags.to_dict() if flags else None)) if v is not None}
    path = Path(checkpoint)
    if sidecar:
        doc = {**read_sidecar(path), **entry, "model_sha256": file_sha256(path)}
        out = sidecar_path(path)
        write_text_atomic(out, json.dumps(doc, indent=1) + "\n")
        return out
    from napari_softseg.engine.checkpoint import build_model, load_checkpoint, save_checkpoint

    state, config = load_checkpoint(path)
    config[CONFIG_KEY] = {**(config.get(CONFIG_KEY) or {}), **entry}
    return save_checkpoint(path, build_model(config, state, source=path.name), config)


def describe_model(name: str | None, kind: str | None, path, config: dict | None) -> dict:
    """What an export records about a model: name, kind (shipped / session / file), file,
    SHA-256 and a summary of its config."""
    cfg = config or {}
    path = None if path is None else Path(path)
    digest = file_sha256(path) if path is not None and path.is_file() else None
    training = cfg.get("training") or {}
    return {"name": name, "kind": kind, "file": path.name if path is not None else None, "sha256": digest,
            "preset": cfg.get("preset"), "contrasts": cfg.get("contrasts"), "classes": cfg.get("classes"),
            "threshold": cfg.get("threshold"), "version": cfg.get("version"),
            "trained_on": training.get("data") or training.get("label_source")}
