"""Strict JSON documents: what the CLI, the review export and the benchmarks write.

:func:`json_ready` turns a result into plain JSON values: numpy scalars and arrays become
Python numbers and lists, paths become strings, dataclasses dicts, and NaN or infinite
numbers become ``null`` (JSON has no NaN; a missing value is reported as such, usually with
its reason beside it). :func:`write_json` writes such a document atomically in UTF-8.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from napari_softseg.io.atomic import write_text_atomic


def json_ready(obj):
    """A copy of ``obj`` made of JSON values only (see the module docstring)."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return json_ready(asdict(obj))
    return obj


def write_json(path, obj, *, indent: int = 2) -> Path:
    """Write :func:`json_ready` ``(obj)`` to ``path`` atomically (UTF-8, non-ASCII kept)."""
    return write_text_atomic(path, json.dumps(json_ready(obj), indent=indent, ensure_ascii=False))
