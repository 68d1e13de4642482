"""Which MRI contrast a layer holds, and which open layer feeds which input of a model (no Qt).

A model's checkpoint names its inputs (``config["contrasts"]``, e.g. ``["FLAIR"]`` or
``["T1w", "T1c", "T2w", "FLAIR"]``). A layer's contrast is read, in this order, from

1. its **layer name** (what the user sees, and may rename),
2. the **file name** it was read from (BIDS suffixes such as ``_FLAIR``, ``_T1w``; BraTS
   suffixes ``t1n``, ``t1c``, ``t2w``, ``t2f``),
3. its **metadata**: the NIfTI header's ``descrip`` and, when a BIDS sidecar ``.json`` sits
   next to the file, its ``SeriesDescription`` / ``ProtocolName`` (kept by the reader in
   ``metadata["description"]``).

Each text is cut into words (letters and digits) and a word is looked up in :data:`ALIASES`
(case-insensitive); the first text with a known word decides. Unknown stays unknown: the
Segment dock then matches by position (channel ``i`` of a multi-contrast scan to input ``i``)
and says that it could not tell, instead of guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

#: canonical contrast -> words that name it (lower case, compared word by word). When a text
#: names several, the first in this order wins ("t2_flair" is FLAIR, "t1_gd" is T1c).
ALIASES: dict[str, tuple[str, ...]] = {
    "FLAIR": ("flair", "t2f", "t2flair", "darkfluid", "tirm"),
    "T1c": ("t1c", "t1ce", "t1gd", "t1post", "t1wce", "t1wgd", "cet1", "gd", "gado", "postcontrast"),
    "T2star": ("t2s", "t2star", "t2starw", "star", "gre", "megre", "medic", "t2sw"),
    "PD": ("pd", "pdw"),
    "T1w": ("t1w", "t1", "t1n", "t1native", "t1pre", "mprage", "spgr", "bravo", "mp2rage"),
    "T2w": ("t2w", "t2", "t2tse", "tse"),
}
_LOOKUP = {word: name for name, words in ALIASES.items() for word in words}
_LOOKUP.update({name.lower(): name for name in ALIASES})


def canonical(text: str | None) -> str | None:
    """The contrast a text names (``"sub-01_FLAIR"`` -> ``"FLAIR"``), or None."""
    if not text:
        return None
    words = re.split(r"[^0-9a-z]+", str(text).lower().replace("*", "star"))
    named = {_LOOKUP[w] for w in words if w in _LOOKUP}
    return next((name for name in ALIASES if name in named), None)


@dataclass(frozen=True)
class Contrast:
    """A layer's contrast (None: unknown) and where it was read from."""

    name: str | None
    source: str  # "layer name", "file name", "metadata" or ""

    def describe(self, layer_name: str) -> str:
        return f"'{layer_name}' looks like {self.name} (from its {self.source})" if self.name else \
            f"the contrast of '{layer_name}' is unknown"


def contrast_of(layer) -> Contrast:
    """The contrast of a layer, from its name, its file name, then its metadata."""
    md = getattr(layer, "metadata", None) or {}
    path = md.get("source_path")
    texts = (("layer name", getattr(layer, "name", "")),
             ("file name", Path(path).name if path else ""),
             ("metadata", md.get("description") or ""))
    for source, text in texts:
        name = canonical(text)
        if name is not None:
            return Contrast(name, source)
    return Contrast(None, "")


def _group(layer) -> tuple[str | None, int]:
    tag = (getattr(layer, "metadata", None) or {}).get("softseg_scan") or {}
    return tag.get("group"), int(tag.get("channel", 0))


def match_inputs(wanted: Sequence[str], layers: Sequence, anchor=None) -> list:
    """For each model input (contrast names ``wanted``), the layer of ``layers`` that should
    feed it, or None.

    A layer whose contrast is the input's is chosen first, preferring the contrasts opened
    with ``anchor`` (the scan the user chose); then, for inputs still open, the layers of
    unknown contrast of that scan by position (its channel ``i`` for input ``i``), then any
    unused layer of unknown contrast; for a one-input model the ``anchor`` itself when
    nothing better is open. A layer feeds one input at most.
    """
    anchor_group = _group(anchor)[0] if anchor is not None else None
    layers = list(layers)
    keyed = sorted(layers, key=lambda lay: (_group(lay)[0] != anchor_group or anchor_group is None,
                                            lay is not anchor))
    used: set[int] = set()
    out: list = [None] * len(wanted)
    for i, want in enumerate(wanted):
        target = canonical(want) or want
        hit = next((lay for lay in keyed if id(lay) not in used and contrast_of(lay).name == target), None)
        if hit is not None:
            out[i] = hit
            used.add(id(hit))
    unknown = [lay for lay in keyed if contrast_of(lay).name is None]
    for i in range(len(wanted)):
        if out[i] is not None:
            continue
        same = [lay for lay in unknown if id(lay) not in used and anchor_group and _group(lay) == (anchor_group, i)]
        rest = [lay for lay in unknown if id(lay) not in used]
        pick = (same or rest or [None])[0]
        if pick is None and len(wanted) == 1 and anchor is not None:
            pick = anchor
        if pick is not None:
            out[i] = pick
            used.add(id(pick))
    return out


def mismatch(want: str, layer) -> str:
    """One sentence when ``layer`` is known to hold another contrast than the model input
    ``want``; '' when it holds that contrast or its contrast is unknown."""
    if layer is None:
        return ""
    target = canonical(want) or want
    have = contrast_of(layer)
    if have.name is None or have.name == target:
        return ""
    return (f"The model expects {want} but {have.describe(layer.name)}; choose the {want} layer, "
            "or the prediction will not mean much.")
