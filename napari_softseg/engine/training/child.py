"""Training in a separate Python process, driven by the training dock (no Qt here).

Why a process: training in a thread of the viewer's process shares its GIL. Building the
optimiser imports ``torch._dynamo`` and ``sympy`` (hundreds of modules, seconds of
bytecode unmarshalling), and some work between two training steps holds the GIL in C; both
froze the viewer's event loop for 100-1000 ms in measurements. A child process has its own
interpreter, so the viewer only unpickles small progress events.

Protocol (length-prefixed pickles, parent -> child on stdin, child -> parent on stdout):

* parent: ``("job", job_dict)``, ``("cancel", job_id)``, ``("plot_size", job_id, (w, h, ratio))``,
  ``("quit",)``;
* child: ``("ready",)`` once imports are warm, then for each job one
  :class:`~napari_softseg.engine.training.config.TrainEvent` per message, the last one of kind ``"done"``,
  interleaved with :class:`~napari_softseg.engine.training.plot.PlotImage` s (the dock's plot, drawn here so that the
  viewer's process never runs matplotlib while training).

A reader thread in the child sets the job's cancel flag, which the trainer polls before every
step. Stray prints of the child go to stderr (file descriptor 1 is redirected), so they can
never corrupt the protocol. The child exits when its stdin closes (the viewer quit).
Start it with ``python -m napari_softseg.engine.training.child``.

Between jobs the child hands its cached GPU memory back to the driver, so an idle child
holds no more VRAM than its CUDA context. After a sticky device error (an illegal memory
access, a device-side assert: the process's CUDA context is unusable from then on) it
reports the failure and exits with :data:`EXIT_DEVICE_ERROR`; the next job starts a fresh
child (:func:`acquire_process`), so training works again without restarting napari.
"""

from __future__ import annotations

import atexit
import importlib
import itertools
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading

_HEADER = struct.Struct("<Q")
_OOM = "Training ran out of memory; try a smaller batch size or crop size."
#: exit status of a child whose device is unusable after a sticky error
EXIT_DEVICE_ERROR = 3


def write_message(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _read_exactly(stream, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("stream closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_message(stream):
    (n,) = _HEADER.unpack(_read_exactly(stream, _HEADER.size))
    return pickle.loads(_read_exactly(stream, n))


def run_job(job: dict, cancel, plot_size=None, outcome: dict | None = None):
    """Build the training data from the job's copies and relay the trainer's events.

    ``job``: ``snapshots``, ``folders``, ``label_source``, ``config``, ``init``,
    ``checkpoint_path`` and ``probes``: ``"module:function"`` names called before training
    (the tests use them to observe or break the trainer); each returns a callable, called
    once the run ends (to undo its changes), whose result is stored in the final event's
    ``summary["probes"]``. Anything that goes wrong becomes a final ``"failed"`` event with
    one sentence. ``plot_size()`` returns the plot's current ``(w, h, ratio)``, or None for
    no plot. ``outcome["device_error"]`` is set True after a sticky device error.
    """
    from napari_softseg.engine.devices import is_fatal_device_error, is_out_of_memory
    from napari_softseg.errors import UserError
    from napari_softseg.engine.training.config import TrainEvent
    from napari_softseg.engine.training.train import train
    from napari_softseg.engine.training.sources import build_training_data

    collectors: dict = {}

    def final(event):
        if collectors:
            results = {name: collect() for name, collect in collectors.items()}
            collectors.clear()
            event.summary = dict(event.summary or {}, probes=results)
        return event

    feed = None
    try:
        for name in job.get("probes") or ():
            module, func = name.split(":")
            collectors[name] = getattr(importlib.import_module(module), func)()
        data = build_training_data(job["snapshots"], job["folders"], job["label_source"])
        for event in train(job["config"], data, init=job["init"], cancel=cancel, checkpoint_path=job["checkpoint_path"]):
            size = plot_size() if plot_size is not None else None
            if size is not None:
                from napari_softseg.engine.training.plot import PlotFeed

                feed = feed or PlotFeed()
                feed.resize((size[0], size[1]), size[2])
                image = feed.feed(event)
                if image is not None:
                    yield image
            yield final(event) if event.kind == "done" else event
    except UserError as err:
        yield final(TrainEvent("done", status="failed", message=str(err)))
    except MemoryError:
        yield final(TrainEvent("done", status="failed", message=_OOM))
    except Exception as err:  # noqa: BLE001 - report, never crash the dock
        logging.getLogger(__name__).exception("training failed")
        text = str(err).strip().splitlines()[0][:200].rstrip(".") if str(err).strip() else type(err).__name__
        message = _OOM if is_out_of_memory(err) else f"Training failed: {text}."
        if is_fatal_device_error(err):
            message += " The GPU stopped working in the training process, which restarts for the next run."
            if outcome is not None:
                outcome["device_error"] = True
        yield final(TrainEvent("done", status="failed", message=message))


def _warm_up() -> None:
    """Import what the first training step needs (torch, the engine, torch._dynamo via
    the optimiser), so that a job starts at once."""
    import torch

    from napari_softseg.engine.training import data  # noqa: F401
    from napari_softseg.engine.training import train  # noqa: F401
    from napari_softseg.engine.training import trainer  # noqa: F401

    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())


class _Inbox:
    """The parent's messages, read by a thread of their own: cancel flags and plot sizes take
    effect at once (the running job polls them); jobs and ``quit`` wait in a queue."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.jobs: list = []
        self.ready = threading.Condition()
        self.cancelled: set = set()
        self.sizes: dict = {}

    def start(self) -> None:
        threading.Thread(target=self._read, name="softseg-training-reader", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                msg = read_message(self.stream)
            except (EOFError, OSError, pickle.UnpicklingError):
                msg = ("quit",)
            with self.ready:
                if msg[0] == "cancel":
                    self.cancelled.add(msg[1])
                    continue
                if msg[0] == "plot_size":
                    self.sizes[msg[1]] = msg[2]
                    continue
                if msg[0] == "quit":
                    self.cancelled.add("*")
                self.jobs.append(msg)
                self.ready.notify()
            if msg[0] == "quit":
                return

    def next_job(self) -> dict | None:
        """The next job (waiting for one), or None once the parent said ``quit``."""
        with self.ready:
            while not self.jobs:
                self.ready.wait()
            msg = self.jobs.pop(0)
        return None if msg[0] == "quit" else msg[1]

    def is_cancelled(self, job_id) -> bool:
        return job_id in self.cancelled or "*" in self.cancelled


def _own_streams():
    """The protocol's binary streams; file descriptor 1 then points to stderr, so that stray
    prints never corrupt the protocol."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything printed from now on goes to stderr
    sys.stdout = sys.stderr
    inp = os.fdopen(os.dup(0), "rb", buffering=0)
    return inp, out


def main() -> int:
    if hasattr(os, "nice"):
        try:
            os.nice(10)  # a background job: the viewer keeps precedence for the CPU
        except OSError:
            pass
    inp, out = _own_streams()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    inbox = _Inbox(inp)
    inbox.start()
    _warm_up()
    write_message(out, ("ready",))
    return serve(inbox, out)


def serve(inbox: "_Inbox", out) -> int:
    """Run the inbox's jobs until ``quit`` (0) or a sticky device error (:data:`EXIT_DEVICE_ERROR`),
    handing cached device memory back after each job."""
    from napari_softseg.engine.devices import release_memory

    while (job := inbox.next_job()) is not None:
        job_id = job.get("id")
        inbox.sizes.setdefault(job_id, job.get("plot_size"))
        outcome: dict = {}
        for event in run_job(job, lambda: inbox.is_cancelled(job_id), lambda: inbox.sizes.get(job_id), outcome):
            write_message(out, event)
        if outcome.get("device_error"):
            return EXIT_DEVICE_ERROR
        release_memory()
    return 0


# ----------------------------------------------------------------------------- parent side
_IDS = itertools.count(1)


class TrainingProcess:
    """The viewer's handle on one child process (reused for successive jobs)."""

    def __init__(self) -> None:
        env = dict(os.environ)
        paths = [p for p in sys.path if p] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        env["PYTHONPATH"] = os.pathsep.join(paths)  # the child finds what the viewer finds
        low = {"creationflags": subprocess.BELOW_NORMAL_PRIORITY_CLASS} if sys.platform == "win32" else {}
        self.proc = subprocess.Popen(  # lowered priority: the viewer keeps precedence for the CPU
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0, **low,
        )
        self._write_lock = threading.Lock()
        self.busy = False
        self.job_id = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _send(self, msg) -> None:
        with self._write_lock:
            write_message(self.proc.stdin, msg)

    def events(self, job: dict):
        """Send ``job`` and yield its events (and plot images) until the final event (run in
        a worker thread)."""
        from napari_softseg.engine.training.config import TrainEvent

        self.busy = True
        self.job_id = job["id"] = next(_IDS)
        try:
            self._send(("job", job))
            while True:
                msg = read_message(self.proc.stdout)
                if isinstance(msg, tuple):  # ("ready",)
                    continue
                yield msg
                if getattr(msg, "kind", None) == "done":
                    return
        except (EOFError, OSError):
            code = self.proc.poll()
            yield TrainEvent("done", status="failed", message=(
                "The training process stopped unexpectedly"
                + (f" (exit code {code})" if code is not None else "")
                + "; it may have run out of memory: try a smaller batch size or crop size."))
        finally:
            self.busy = False
            self.job_id = None

    def cancel(self) -> None:
        self._send_quietly(("cancel", self.job_id))

    def set_plot_size(self, size) -> None:
        self._send_quietly(("plot_size", self.job_id, tuple(size)))

    def _send_quietly(self, msg) -> None:
        if self.job_id is not None:
            try:
                self._send(msg)
            except OSError:
                pass

    def close(self, timeout: float = 3.0) -> None:
        try:
            self._send(("quit",))
            self.proc.stdin.close()
            self.proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            self.proc.kill()


_POOL: list[TrainingProcess] = []


def acquire_process(reserve: bool = True) -> TrainingProcess:
    """An idle, living child process (started now if none is), reserved for one job
    (:meth:`TrainingProcess.events` frees it) unless ``reserve`` is False."""
    _POOL[:] = [p for p in _POOL if p.alive()]
    for p in _POOL:
        if not p.busy:
            break
    else:
        p = TrainingProcess()
        _POOL.append(p)
    p.busy = reserve
    return p


def prestart() -> None:
    """Start a child in the background so that its imports are warm by the first job."""
    try:
        acquire_process(reserve=False)
    except OSError:  # reported when training starts
        logging.getLogger(__name__).exception("the training process could not be started")


@atexit.register
def _close_all() -> None:
    for p in _POOL:
        p.close()
    _POOL.clear()


if __name__ == "__main__":
    sys.exit(main())
