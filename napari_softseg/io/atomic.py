"""Atomic file writes: the one way napari_softseg writes a file.

A file is written to a temporary file in the target's folder, flushed to disk with ``fsync``
and renamed over the target with ``os.replace``. A process killed at any instant leaves
either the previous or the new complete file, never a partial one; on any failure the
temporary file is removed.

Temporary files
---------------
Their name is hidden and recognisable, ``.<stem>.<host>-<pid>-<random>.softseg-tmp<suffix>``
(e.g. ``.model.3fa2-4242-9c1e07aa.softseg-tmp.pt``): the target's suffix stays last so that
libraries choosing the format by the suffix (nibabel for ``.nii.gz``) write the right thing,
and the host and process that wrote it are known. A process killed by SIGKILL or a power cut
cannot remove its temporary file; :func:`remove_stale_temporaries` (called by every command
for its output folders, and by autosave) deletes those whose process no longer runs on this
machine. A temporary file gets the user's normal permissions (``0666`` less the umask), like
any file the user creates, not the private ``0600`` of :func:`tempfile.mkstemp`.

Errors
------
Every operating-system error of a write (read-only folder, full disk, file-size limit,
a folder in the way, a missing folder, a name too long ...) becomes a
:class:`~napari_softseg.errors.UserError` whose one sentence names the file
(:func:`write_error`). The temporary file is created inside that error handling.

:func:`atomic_path` yields the temporary path (for writers that take a file name),
:func:`atomic_open` an open file object, :func:`write_bytes_atomic` and
:func:`write_text_atomic` write a whole payload, :func:`probe_folder` checks that a folder
takes a new file before any work is done.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from napari_softseg.errors import UserError

#: Marks temporary files; a leftover one matches ``.*.softseg-tmp*``.
TEMP_MARK = ".softseg-tmp"
_TEMP_RE = re.compile(r"^\.(?P<stem>.*)\.(?P<host>[0-9a-f]{4})-(?P<pid>\d+)-[0-9a-f]+" + re.escape(TEMP_MARK) + r".*$")


def split_suffix(name: str) -> tuple[str, str]:
    """``(stem, suffix)`` of a file name; a compressed suffix keeps its inner one
    (``scan.nii.gz`` → ``("scan", ".nii.gz")``)."""
    path = Path(name)
    suffixes = path.suffixes
    suffix = "".join(suffixes[-2:]) if len(suffixes) >= 2 and path.suffix.lower() == ".gz" else path.suffix
    return name[: len(name) - len(suffix)], suffix


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:4]


def temporary_name(target_name: str) -> str:
    """The hidden temporary name for ``target_name`` (see the module docstring)."""
    stem, suffix = split_suffix(target_name)
    return f".{stem}.{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}{TEMP_MARK}{suffix}"


# ------------------------------------------------------------------ error sentences

def _reason(err: OSError, folder: Path) -> str:
    """What went wrong, as the end of a sentence (after "Cannot write NAME: ")."""
    code = err.errno
    if code in (errno.EACCES, errno.EPERM) or isinstance(err, PermissionError):
        return f"permission denied: you cannot create files in {folder}"
    if code == errno.EROFS:
        return f"{folder} is on a read-only file system"
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"the disk holding {folder} is full (or your disk quota is used up)"
    if code == errno.EFBIG:
        return "the file would exceed the largest file size allowed here (a file-size limit of this system or session)"
    if code == errno.EISDIR:
        return "a folder of that name is in the way"
    if code == errno.ENOENT:
        return f"folder {folder} does not exist"
    if code == errno.ENOTDIR:
        return f"{folder} is not a folder"
    if code == errno.ENAMETOOLONG:
        return "the file name is too long for this file system"
    text = err.strerror or str(err).strip() or type(err).__name__
    return f"{text[:1].lower() + text[1:]} (in {folder})"


def write_error(path, err: OSError) -> UserError:
    """The one-sentence :class:`UserError` for an operating-system error while writing ``path``."""
    path = Path(path)
    return UserError(f"Cannot write {path.name}: {_reason(err, path.parent)}.")


def _create_temporary(folder: Path, target_name: str) -> Path:
    """Create an empty temporary file for ``target_name`` in ``folder`` (umask permissions)."""
    for _ in range(100):
        tmp = folder / temporary_name(target_name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no unused temporary name", str(folder))


# ------------------------------------------------------------------ writing

@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without an exception the
    file written there is synced to disk and moved onto ``path`` (see the module docstring)."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise UserError(f"Cannot write {path.name}: a folder of that name is in the way.")
    if not folder.is_dir():
        raise UserError(f"Cannot write {path.name}: folder {folder} does not exist.")
    tmp = None
    try:
        tmp = _create_temporary(folder, path.name)
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _discard(tmp)
        raise write_error(path, err) from None
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path | None) -> None:
    if tmp is not None:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


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


def probe_folder(path) -> None:
    """Check that the folder of ``path`` takes a new file (a temporary file is created and
    removed); raise the :func:`write_error` sentence for ``path`` otherwise."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"Cannot write {path.name}: folder {path.parent} does not exist.")
    try:
        tmp = _create_temporary(path.parent, path.name)
    except OSError as err:
        raise write_error(path, err) from None
    _discard(tmp)


# ------------------------------------------------------------------ leftovers of killed runs

def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists but belongs to someone else
        return False
    return False


def stale_temporaries(folder) -> list[Path]:
    """Temporary files in ``folder`` written on this machine by processes that no longer run."""
    folder = Path(folder)
    try:
        names = [p for p in folder.iterdir() if p.name.startswith(".") and TEMP_MARK in p.name]
    except OSError:
        return []
    host = _host_tag()
    stale = []
    for p in names:
        m = _TEMP_RE.match(p.name)
        if m and m["host"] == host and int(m["pid"]) != os.getpid() and _process_gone(int(m["pid"])):
            stale.append(p)
    return sorted(stale)


def remove_stale_temporaries(folder) -> tuple[int, int]:
    """Delete :func:`stale_temporaries` of ``folder``; return ``(files removed, bytes freed)``."""
    count = freed = 0
    for p in stale_temporaries(folder):
        try:
            size = p.stat().st_size
            p.unlink()
        except OSError:
            continue
        count, freed = count + 1, freed + size
    return count, freed
