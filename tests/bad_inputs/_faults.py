"""Run ``napari-softseg ARGS`` with a fault injected at a precise moment (used by test_faults).

``python _faults.py SCENARIO [ARGS...]``; the fault comes from inside the process at a named
step, so no case depends on timing:

* ``sigint-import``: Ctrl-C while torch is being imported;
* ``sigint-load``: Ctrl-C when the first NIfTI file is being read;
* ``sigint-inference``: Ctrl-C after the first batch of slices has been predicted;
* ``sigint-write``: Ctrl-C inside the write of the first NIfTI output (after nibabel wrote it);
* ``sigint-epoch``: Ctrl-C when epoch 3 starts (epochs 1 and 2 have finished);
* ``sigint-twice``: Ctrl-C when epoch 3 starts and again inside the final checkpoint write;
* ``sigkill-nifti``: SIGKILL when the first NIfTI output is half written;
* ``sigkill-checkpoint``: SIGKILL when the second checkpoint write is half done;
* ``fsize=N``: a file-size limit of N bytes (``RLIMIT_FSIZE``), as on a full disk or quota.
"""

from __future__ import annotations

import importlib.abc
import os
import signal
import sys


def _interrupt() -> None:
    os.kill(os.getpid(), signal.SIGINT)


class _TorchImport(importlib.abc.MetaPathFinder):
    """Ctrl-C as the import of torch begins; at exit, says on stdout whether torch got imported
    completely (the interrupt must wait for the import to end)."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            import atexit

            sys.meta_path.remove(self)
            atexit.register(lambda: print("torch imported completely:", hasattr(sys.modules.get("torch"), "nn")))
            _interrupt()
        return None


def _half_write_nifti(then) -> None:
    import nibabel

    original = nibabel.Nifti1Image.to_filename

    def to_filename(self, filename, **kwargs):
        original(self, filename, **kwargs)
        if then == "kill":
            size = os.path.getsize(filename)
            os.truncate(filename, size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        _interrupt()

    nibabel.Nifti1Image.to_filename = to_filename


_STATE = {"interrupted": False}


def _on_epoch(number: int) -> None:
    from napari_softseg.engine.training.trainer import Trainer

    original = Trainer._train_epoch

    def _train_epoch(self, epoch, *args, **kwargs):
        if epoch == number:
            _STATE["interrupted"] = True
            _interrupt()
        return original(self, epoch, *args, **kwargs)

    Trainer._train_epoch = _train_epoch


def _checkpoint_write(when: str, then: str) -> None:
    """Write half of a checkpoint through the real atomic write, then ``then`` ("kill" or
    "interrupt"); ``when``: "second" (the second checkpoint write) or "final" (the first write
    after the interrupt of :func:`_on_epoch`)."""
    from napari_softseg.engine import checkpoint
    from napari_softseg.io.atomic import atomic_open

    original = checkpoint.write_bytes_atomic
    calls = [0]

    def write_bytes_atomic(path, payload):
        calls[0] += 1
        if (when == "second" and calls[0] == 2) or (when == "final" and _STATE["interrupted"]):
            with atomic_open(path, "wb") as fh:
                fh.write(payload[: len(payload) // 2])
                fh.flush()
                os.kill(os.getpid(), signal.SIGKILL if then == "kill" else signal.SIGINT)
        return original(path, payload)

    checkpoint.write_bytes_atomic = write_bytes_atomic


def _install(scenario: str) -> None:
    if scenario.startswith("fsize="):
        import resource

        # a write beyond the limit is first cut short without an error: Python would leave
        # truncated bytecode caches behind that break later imports
        sys.dont_write_bytecode = True

        limit = int(scenario.split("=", 1)[1])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    elif scenario == "sigint-import":
        sys.meta_path.insert(0, _TorchImport())
    elif scenario == "sigint-load":
        from napari_softseg.io import nifti

        original = nifti.read_nifti

        def read_nifti(*args, **kwargs):
            _interrupt()
            return original(*args, **kwargs)

        nifti.read_nifti = read_nifti
    elif scenario == "sigint-inference":
        from napari_softseg.commands import predict

        predict.ProgressBar.__call__ = lambda self, done, total: _interrupt()
    elif scenario in ("sigint-write", "sigkill-nifti"):
        _half_write_nifti("kill" if scenario == "sigkill-nifti" else "interrupt")
    elif scenario == "sigint-epoch":
        _on_epoch(3)
    elif scenario == "sigint-twice":
        _on_epoch(3)
        _checkpoint_write("final", "interrupt")
    elif scenario == "sigkill-checkpoint":
        _checkpoint_write("second", "kill")
    else:
        raise SystemExit(f"unknown scenario {scenario}")


def run_in_child(scenario: str, argv: list[str], out, err) -> None:
    """The same as running this file, in a child forked from a server that has imported torch
    once (``multiprocessing``'s forkserver); stdout and stderr go to the pipes ``out`` and
    ``err`` (pipes, unlike files, are not bound by a file-size limit)."""
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _install(scenario)
    from napari_softseg.commands import main

    sys.exit(main(argv))

if __name__ == "__main__":
    _install(sys.argv[1])
    from napari_softseg.commands import main

    sys.exit(main(sys.argv[2:]))
