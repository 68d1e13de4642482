"""Atomic file writes: the one way napari_softseg writes a file.

A file is written to a temporary file in the target's folder (a hidden name that keeps the
target's suffix, ``.<stem>.<random>.tmp<suffix>``, so that libraries choosing the format by
the suffix, such as nibabel for ``.nii.gz``, write the right thing), flushed to disk with
``fsync`` and renamed over the target with ``os.replace``. A process killed at any instant
leaves either the previous or the new complete file, never a partial one; on any failure the
temporary file is removed. A missing folder, a permission problem or another operating-system
error (a full disk) raises :class:`~napari_softseg.errors.UserError` with one sentence that
names the file.

:func:`atomic_path` yields the temporary path (for writers that take a file name),
:func:`atomic_open` an open file object, :func:`write_bytes_atomic` and
:func:`write_text_atomic` write a whole payload.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from napari_softseg.errors import UserError

#: Marks temporary files (``.<stem>.<random>.tmp<suffix>``); a leftover one matches ``.*.tmp*``.
TEMP_MARK = ".tmp"


def split_suffix(name: str) -> tuple[str, str]:
    """``(stem, suffix)`` of a file name; a compressed suffix keeps its inner one
    (``scan.nii.gz`` → ``("scan", ".nii.gz")``)."""
    path = Path(name)
    suffixes = path.suffixes
    suffix = "".join(suffixes[-2:]) if len(suffixes) >= 2 and path.suffix.lower() == ".gz" else path.suffix
    return name[: len(name) - len(suffix)], suffix


def _reason(err: OSError) -> str:
    if isinstance(err, PermissionError):
        return "permission denied"
    text = err.strerror or str(err).strip() or type(err).__name__
    return text[:1].lower() + text[1:]


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without an exception the
    file written there is synced to disk and moved onto ``path`` (see the module docstring)."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise UserError(f"Cannot write {path.name}: folder {folder} does not exist.")
    stem, suffix = split_suffix(path.name)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=TEMP_MARK + suffix, dir=folder)
    except OSError as err:
        raise UserError(f"Cannot write {path.name}: {_reason(err)} in {folder}.") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"Cannot write {path.name}: {_reason(err)} in {folder}.") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """An open file (``open(tmp, mode, **kwargs)``) whose content replaces ``path`` atomically
    when the block ends without an exception."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes a new file; mode {mode!r} is not a 'w' mode")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh


def write_bytes_atomic(path, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` atomically; return the path."""
    with atomic_open(path, "wb") as fh:
        fh.write(payload)
    return Path(path)


def write_text_atomic(path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; return the path."""
    with atomic_open(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)
