"""Faults from outside: a full disk (file-size limit), read-only folders, Ctrl-C at several
moments, SIGKILL during writes. Each runs in a child process; the fault is injected at a named
step from inside it (``_faults.py``), so no case depends on timing."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bad_inputs.harness import REPO, Run, cli, digest, hidden

FAULTS = Path(__file__).with_name("_faults.py")
TRAIN = ["--device", "cpu", "--depth", "1", "--features", "4", "--batch-size", "4", "--no-augment", "--threads", "1"]
TOO_BIG = "the file would exceed the largest file size allowed here (a file-size limit of this system or session)"


#: What the fork server imports once, so that each case starts in a fraction of a second.
PRELOAD = ["numpy", "nibabel", "scipy.ndimage", "scipy.special", "torch", "torch._dynamo", "napari_softseg.commands",
           "napari_softseg.engine.training.train", "napari_softseg.engine.predict", "bad_inputs._faults"]
_CONTEXT = []


def _forkserver():
    if not _CONTEXT:
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _CONTEXT.append(ctx)
    return _CONTEXT[0]


def fault(scenario: str, *argv) -> Run:
    """``napari-softseg ARGV`` in a child process with ``scenario`` injected (see ``_faults.py``):
    a fresh interpreter for an interrupt during imports, else a child of a fork server that has
    imported torch once."""
    argv = [str(a) for a in argv]
    if scenario == "sigint-import":
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        proc = subprocess.run(
            [sys.executable, str(FAULTS), scenario, *argv], capture_output=True, text=True, env=env, timeout=300,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # even when we run in the background
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)
    from bad_inputs._faults import run_in_child

    ctx = _forkserver()
    (out_r, out_w), (err_r, err_w) = ctx.Pipe(duplex=False), ctx.Pipe(duplex=False)
    child = ctx.Process(target=run_in_child, args=(scenario, argv, out_w, err_w))
    child.start()
    out_w.close()
    err_w.close()
    out, err = _read_all(out_r), _read_all(err_r)
    child.join(300)
    assert child.exitcode is not None, "the child did not finish"
    return Run(child.exitcode, out, err)


def _read_all(conn) -> str:
    chunks = []
    while chunk := os.read(conn.fileno(), 65536):
        chunks.append(chunk)
    conn.close()
    return b"".join(chunks).decode()


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB"


def _unchanged_but(folder, before: dict, *new: str) -> None:
    """Every file of ``before`` is unchanged and the only new files are ``new`` (complete ones)."""
    after = digest(folder)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == sorted(new)


# ------------------------------------------------------------------ full disk (file-size limit)

@pytest.mark.parametrize("command", ["fuse", "evaluate", "predict", "train"])
def test_a_full_disk_is_one_sentence_and_leaves_nothing(own, command):
    f = own.folder
    argv, name = {
        "fuse": (["fuse", "-o", f / "f.nii.gz", own.a, own.b], "f.nii.gz"),
        "evaluate": (["evaluate", "--pred", own.soft, "--truth", own.a, "--json", f / "r.json"], "r.json"),
        "predict": (["predict", "-q", "-m", own.model, "-o", f / "p.nii.gz", own.scan], "p.nii.gz"),
        "train": (["train", "--image", own.scan, "--label", own.a, *TRAIN, "--epochs", "1", "--quiet",
                   "--out", f / "m.pt"], "m.pt"),
    }[command]
    before = digest(f)
    run = fault("fsize=100", *argv)
    assert run.status == 2, run.err
    assert run.err.splitlines()[-1] == f"napari-softseg {command}: error: Cannot write {name}: {TOO_BIG}."
    assert "Traceback" not in run.err and digest(f) == before


# ------------------------------------------------------------------ read-only folders

@pytest.fixture
def shared_tmp(own):
    """A folder another user can reach (the test's own tmp folder is private to its owner),
    with the inputs and a read-only output folder ``ro``."""
    folder = Path(tempfile.mkdtemp(prefix="softseg-ro-"))
    try:
        folder.chmod(0o777)  # the other user writes its outputs here, and only ro/ is read-only
        for p in own.folder.iterdir():
            shutil.copy(p, folder / p.name)
            (folder / p.name).chmod(0o644)
        (folder / "ro").mkdir()
        if os.geteuid() == 0:
            os.chown(folder / "ro", 65534, 65534)
        (folder / "ro").chmod(0o555)
        yield folder
    finally:
        (folder / "ro").chmod(0o755)
        shutil.rmtree(folder)


def as_other_user(*argv) -> Run:
    """``napari-softseg ARGV`` in a forked child that runs as ``nobody`` when we are root (root
    may write anywhere), as ourselves otherwise."""
    from napari_softseg.commands import main

    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 99
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            sys.stdout = open(out_w, "w", closefd=False)
            sys.stderr = open(err_w, "w", closefd=False)
            status = main([str(a) for a in argv])
        except BaseException:  # noqa: BLE001 - reported to the parent as a traceback
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    os.close(out_w)
    os.close(err_w)
    _, wait = os.waitpid(pid, 0)
    with open(out_r) as o, open(err_r) as e:
        return Run(os.waitstatus_to_exitcode(wait), o.read(), e.read())


READ_ONLY = {
    "predict": (lambda f: ["predict", "-m", f / "model.pt", "-o", f / "ro" / "p.nii.gz", f / "scan.nii.gz"], "p.nii.gz"),
    "predict-mask": (lambda f: ["predict", "-m", f / "model.pt", "-o", f / "p.nii.gz", "-t", "0.5",
                                "--mask-out", f / "ro" / "m.nii.gz", f / "scan.nii.gz"], "m.nii.gz"),
    "fuse": (lambda f: ["fuse", "-o", f / "ro" / "f.nii.gz", f / "a.nii.gz", f / "b.nii.gz"], "f.nii.gz"),
    "fuse-report": (lambda f: ["fuse", "-o", f / "f.nii.gz", "--report", f / "ro" / "r.json", f / "a.nii.gz",
                               f / "b.nii.gz"], "r.json"),
    "evaluate": (lambda f: ["evaluate", "--pred", f / "soft.nii.gz", "--truth", f / "a.nii.gz",
                            "--json", f / "ro" / "r.json"], "r.json"),
    "train": (lambda f: ["train", "--image", f / "scan.nii.gz", "--label", f / "a.nii.gz", "--out", f / "ro" / "m.pt"],
              "m.pt"),
}


@pytest.mark.parametrize("case", sorted(READ_ONLY))
def test_a_read_only_output_folder_is_refused_before_any_work(shared_tmp, case):
    make, name = READ_ONLY[case]
    argv = make(shared_tmp)
    before = digest(shared_tmp)
    run = as_other_user(*argv)
    command = argv[0]
    assert run.err == (f"napari-softseg {command}: error: Cannot write {name}: permission denied: "
                       f"you cannot create files in {shared_tmp / 'ro'}.\n"), run.err
    assert run.status == 2 and run.out == ""
    assert digest(shared_tmp) == before


# ------------------------------------------------------------------ Ctrl-C

@pytest.mark.parametrize("scenario", ["sigint-import", "sigint-load", "sigint-inference", "sigint-write"])
def test_ctrl_c_during_a_prediction(own, scenario):
    f = own.folder
    before = digest(f)
    quiet = [] if scenario == "sigint-inference" else ["-q"]
    run = fault(scenario, "predict", *quiet, "-m", own.model, "-o", f / "p.nii.gz", own.scan)
    assert (run.status, run.err) == (130, "napari-softseg predict: interrupted.\n")
    # (an interrupt during the import of torch waits for the import to finish)
    assert run.out == ("torch imported completely: True\n" if scenario == "sigint-import" else "")
    assert digest(f) == before  # no output, no temporary file


def test_ctrl_c_while_training_data_load(own):
    before = digest(own.folder)
    run = fault("sigint-load", "train", "--image", own.scan, "--label", own.a, *TRAIN, "--epochs", "3",
                "--out", own.folder / "m.pt")
    assert (run.status, run.err, run.out) == (130, "napari-softseg train: interrupted.\n", "")
    assert digest(own.folder) == before


def _epoch_lines(err: str) -> list[tuple[int, int]]:
    """(epoch, best epoch) of every epoch line the progress printed."""
    return [(int(m[1]), int(m[2])) for m in re.finditer(r"^epoch (\d+)/\d+ .* \(epoch (\d+)\)", err, re.M)]


def test_ctrl_c_during_an_epoch_stops_and_keeps_the_best_weights(own):
    from napari_softseg.engine.checkpoint import load_checkpoint

    before = digest(own.folder)
    out = own.folder / "m.pt"
    run = fault("sigint-epoch", "train", "--image", own.scan, "--label", own.a, *TRAIN, "--epochs", "5", "--out", out)
    assert run.status == 130 and "Traceback" not in run.err
    epochs = _epoch_lines(run.err)
    assert [e for e, _ in epochs] == [1, 2]  # epoch 3 was interrupted at its start
    best = epochs[-1][1]
    assert run.out.startswith("Cancelled after 2 epochs: best validation loss ") and \
        run.out.rstrip().endswith(f"at epoch {best}, threshold 0.50; model written to {out}")
    _, config = load_checkpoint(out)
    assert (config["training"]["status"], config["training"]["best_epoch"], config["training"]["epochs_run"]) == \
        ("cancelled", best, 2)
    _unchanged_but(own.folder, before, "m.pt")


def test_ctrl_c_twice_still_leaves_the_best_checkpoint(own):
    """The second Ctrl-C interrupts the final write; the weights written at the best epoch stay."""
    from napari_softseg.engine.checkpoint import load_checkpoint
    from napari_softseg.engine.predict import load_model

    before = digest(own.folder)
    out = own.folder / "m.pt"
    run = fault("sigint-twice", "train", "--image", own.scan, "--label", own.a, *TRAIN, "--epochs", "5", "--out", out)
    assert run.status == 130 and "Traceback" not in run.err and run.out == ""
    best = _epoch_lines(run.err)[-1][1]
    assert run.err.splitlines()[-1] == (f"napari-softseg train: interrupted; the best weights so far (epoch {best}) "
                                        f"are in {out}.")
    _, config = load_checkpoint(out)
    assert (config["training"]["status"], config["training"]["best_epoch"]) == ("interrupted", best)
    load_model(out)  # a complete, usable model
    _unchanged_but(own.folder, before, "m.pt")


# ------------------------------------------------------------------ SIGKILL during writes

def test_sigkill_while_writing_a_prediction_leaves_a_leftover_the_next_run_removes(capsys, own):
    f = own.folder
    before = digest(f)
    run = fault("sigkill-nifti", "predict", "-q", "-m", own.model, "-o", f / "p.nii.gz", own.scan)
    assert run.status == -signal.SIGKILL
    assert not (f / "p.nii.gz").exists()  # never a half-written output under the real name
    leftovers = hidden(f)
    assert len(leftovers) == 1 and leftovers[0].startswith(".p.") and leftovers[0].endswith(".softseg-tmp.nii.gz")
    size = (f / leftovers[0]).stat().st_size
    again = cli(capsys, "predict", "-q", "-m", own.model, "-o", f / "p.nii.gz", own.scan)
    assert again.status == 0
    assert again.err == f"note: Removed 1 temporary file ({_size(size)}) left in {f} by interrupted runs.\n"
    assert hidden(f) == []
    _unchanged_but(f, before, "p.nii.gz")


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(capsys, own):
    from napari_softseg.engine.checkpoint import load_checkpoint

    f = own.folder
    before = digest(f)
    out = f / "m.pt"
    run = fault("sigkill-checkpoint", "train", "--image", own.scan, "--label", own.a, *TRAIN, "--epochs", "5",
                "--out", out)
    assert run.status == -signal.SIGKILL
    _, config = load_checkpoint(out)  # the first write (epoch 1) is intact
    assert (config["training"]["status"], config["training"]["best_epoch"]) == ("interrupted", 1)
    leftovers = hidden(f)
    assert len(leftovers) == 1 and leftovers[0].startswith(".m.") and leftovers[0].endswith(".softseg-tmp.pt")
    size = (f / leftovers[0]).stat().st_size
    again = cli(capsys, "predict", "-q", "-m", out, "-o", f / "p.nii.gz", own.scan)  # the kept model works
    assert again.status == 0
    assert again.err == f"note: Removed 1 temporary file ({_size(size)}) left in {f} by interrupted runs.\n"
    _unchanged_but(f, before, "m.pt", "p.nii.gz")
