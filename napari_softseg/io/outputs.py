"""The output guard: what every command checks about the files it will write, before any work.

:func:`guard_outputs` takes the run's outputs (option, path, kind) and inputs (option, path)
and refuses, each with one sentence,

* an output name of the wrong kind (a NIfTI output must end in ``.nii``/``.nii.gz``, a
  checkpoint in ``.pt``/``.pth``, a JSON document in ``.json``);
* an output that is a folder, or whose folder does not exist;
* an output that is one of the run's inputs: the same file under the same name, another
  spelling of its path, a symbolic link to it or a hard link of it (writing it would replace
  the input);
* two outputs of the run that are the same file;
* an output folder that does not take a new file (read-only, full ...): a temporary file is
  created there and removed (:func:`napari_softseg.io.atomic.probe_folder`).

It also removes the temporary files that killed runs left in the output folders
(:func:`napari_softseg.io.atomic.remove_stale_temporaries`) and returns a note saying so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from napari_softseg.errors import UserError
from napari_softseg.io.atomic import probe_folder, remove_stale_temporaries
from napari_softseg.io.checks import human_bytes

#: Accepted file name endings per kind of output.
SUFFIXES: dict[str, tuple[str, ...]] = {
    "nifti": (".nii", ".nii.gz"),
    "checkpoint": (".pt", ".pth"),
    "json": (".json",),
    "table": (".csv", ".json"),
}
_KIND_WORDS = {"nifti": "a NIfTI output", "checkpoint": "a checkpoint (trained model)",
               "json": "a JSON report", "table": "a table"}


@dataclass(frozen=True)
class Output:
    """One file a command will write: the option that names it, its path and its kind
    (a key of :data:`SUFFIXES`, or ``"folder"`` for an output folder)."""

    option: str
    path: Path | None
    kind: str

    def __post_init__(self) -> None:
        if self.path is not None:
            object.__setattr__(self, "path", Path(self.path))


def _identity(path: Path):
    """The file's device and inode when it exists (same for every link), else its absolute path."""
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", str(Path(os.path.abspath(path)).resolve()))


def _check_name(out: Output) -> None:
    if out.kind == "folder":
        if out.path.exists() and not out.path.is_dir():
            raise UserError(f"{out.option} {out.path.name} is a file; give a folder for the outputs.")
        return
    allowed = SUFFIXES[out.kind]
    if not out.path.name.lower().endswith(allowed):
        raise UserError(f"{out.option} {out.path.name}: {_KIND_WORDS[out.kind]} must end in {' or '.join(allowed)}.")
    if out.path.is_dir():
        raise UserError(f"{out.option} {out.path.name} is a folder; give a file name.")


def _check_folder(out: Output) -> Path:
    folder = out.path if out.kind == "folder" else out.path.parent
    if out.kind == "folder":
        parent = out.path.parent
        if not out.path.exists() and not parent.is_dir():
            raise UserError(f"Cannot write {out.path.name}: folder {parent} does not exist.")
        return folder if out.path.exists() else parent
    if not folder.is_dir():
        raise UserError(f"Cannot write {out.path.name}: folder {folder} does not exist.")
    return folder


def guard_outputs(outputs: Sequence[Output], inputs: Sequence[tuple[str, object]] = ()) -> list[str]:
    """Check the run's ``outputs`` against each other and its ``inputs`` (option, path) as the
    module docstring says; return notes for the user (removed temporary files)."""
    outputs = [o for o in outputs if o.path is not None]
    seen: dict = {}
    for option, path in inputs:
        if path is not None:
            seen.setdefault(_identity(Path(path)), (option, Path(path), "input"))
    folders: list[Path] = []
    for out in outputs:
        _check_name(out)
        folder = _check_folder(out)
        key = _identity(out.path)
        if key in seen:
            option, path, role = seen[key]
            if role == "input":
                raise UserError(f"{out.option} {out.path.name} is also an input ({option} {path.name}); "
                                "writing it would replace that input, so choose another output name.")
            raise UserError(f"{out.option} {out.path.name} is the same file as {option} {path.name}; "
                            "give each output its own name.")
        seen[key] = (out.option, out.path, "output")
        if folder not in folders:
            folders.append(folder)
            probe_folder(folder / (out.path.name if out.kind != "folder" else ".probe"))
    return [note for folder in folders if (note := _cleanup_note(folder))]


def _cleanup_note(folder: Path) -> str | None:
    count, freed = remove_stale_temporaries(folder)
    if not count:
        return None
    files = "file" if count == 1 else "files"
    return f"Removed {count} temporary {files} ({human_bytes(freed)}) left in {folder} by interrupted runs."
