"""The output guard on the command line: an output never replaces an input or another output,
and a bad output name or folder is refused before any work (nothing read, nothing written)."""

from __future__ import annotations

import os

import pytest

from bad_inputs.harness import cli, digest, hidden, refused


def test_predict_output_equal_to_the_scan(capsys, own):
    refused(capsys, own.folder, ["predict", "-m", own.model, "-o", own.scan, own.scan],
            "-o scan.nii.gz is also an input (IMAGE scan.nii.gz); writing it would replace that input, "
            "so choose another output name.")


def test_predict_output_that_is_a_symbolic_link_to_the_scan(capsys, own):
    link = own.folder / "link.nii.gz"
    link.symlink_to(own.scan)
    refused(capsys, own.folder, ["predict", "-m", own.model, "-o", link, own.scan],
            "-o link.nii.gz is also an input (IMAGE scan.nii.gz); writing it would replace that input, "
            "so choose another output name.")


def test_predict_output_that_is_a_hard_link_of_the_scan(capsys, own):
    link = own.folder / "hard.nii.gz"
    os.link(own.scan, link)
    refused(capsys, own.folder, ["predict", "-m", own.model, "-o", link, own.scan],
            "-o hard.nii.gz is also an input (IMAGE scan.nii.gz); writing it would replace that input, "
            "so choose another output name.")


def test_predict_output_spelt_through_another_folder(capsys, own):
    (own.folder / "sub").mkdir()
    other = own.folder / "sub" / ".." / "scan.nii.gz"
    refused(capsys, own.folder, ["predict", "-m", own.model, "-o", other, own.scan],
            "-o scan.nii.gz is also an input (IMAGE scan.nii.gz); writing it would replace that input, "
            "so choose another output name.")


def test_predict_mask_equal_to_the_soft_output(capsys, world):
    out = world.folder / "p.nii.gz"
    refused(capsys, world.folder, ["predict", "-m", world.model, "-o", out, "-t", "0.5", "--mask-out", out, world.scan],
            "--mask-out p.nii.gz is the same file as -o p.nii.gz; give each output its own name.")


def test_predict_entropy_equal_to_the_mask(capsys, world):
    mask = world.folder / "m.nii.gz"
    refused(capsys, world.folder, ["predict", "-m", world.model, "-o", world.folder / "p.nii.gz", "-t", "0.5",
                                   "--mask-out", mask, "--uncertainty", "--entropy-out", mask, world.scan],
            "--entropy-out m.nii.gz is the same file as --mask-out m.nii.gz; give each output its own name.")


def test_predict_default_mask_name_equal_to_an_input(capsys, own):
    # -o scan_x.nii.gz with -t writes scan_x_mask.nii.gz by default: here that is an input
    taken = own.folder / "p_mask.nii.gz"
    taken.write_bytes(own.scan.read_bytes())
    refused(capsys, own.folder, ["predict", "-m", own.model, "-o", own.folder / "p.nii.gz", "-t", "0.5", taken],
            "--mask-out p_mask.nii.gz is also an input (IMAGE p_mask.nii.gz); writing it would replace that input, "
            "so choose another output name.")


def test_predict_output_that_is_a_folder(capsys, own):
    (own.folder / "dir.nii.gz").mkdir()
    refused(capsys, own.folder, ["predict", "-m", own.model, "-o", own.folder / "dir.nii.gz", own.scan],
            "-o dir.nii.gz is a folder; give a file name.")


def test_predict_output_in_a_missing_folder(capsys, world):
    refused(capsys, world.folder, ["predict", "-m", world.model, "-o", world.folder / "missing" / "p.nii.gz", world.scan],
            f"Cannot write p.nii.gz: folder {world.folder / 'missing'} does not exist.")


def test_predict_output_with_a_wrong_suffix(capsys, world):
    refused(capsys, world.folder, ["predict", "-m", world.model, "-o", world.folder / "p.png", world.scan],
            "-o p.png: a NIfTI output must end in .nii or .nii.gz.")


def test_predict_mask_out_without_threshold(capsys, world):
    refused(capsys, world.folder, ["predict", "-m", world.model, "-o", world.folder / "p.nii.gz",
                                   "--mask-out", world.folder / "m.nii.gz", world.scan],
            "--mask-out names the mask written with --threshold; give --threshold too.")


def test_fuse_output_equal_to_a_rater(capsys, world):
    refused(capsys, world.folder, ["fuse", "-m", "average", "-o", world.b, world.a, world.b],
            "-o b.nii.gz is also an input (RATER b.nii.gz); writing it would replace that input, "
            "so choose another output name.")


def test_fuse_hard_equal_to_the_output(capsys, world):
    out = world.folder / "f.nii.gz"
    refused(capsys, world.folder, ["fuse", "-o", out, "--hard", out, world.a, world.b],
            "--hard f.nii.gz is the same file as -o f.nii.gz; give each output its own name.")


def test_fuse_report_in_a_missing_folder(capsys, world):
    refused(capsys, world.folder, ["fuse", "-o", world.folder / "f.nii.gz", "--report", world.folder / "no" / "r.json",
                                   world.a, world.b],
            f"Cannot write r.json: folder {world.folder / 'no'} does not exist.")


def test_fuse_report_with_a_nifti_name(capsys, world):
    refused(capsys, world.folder, ["fuse", "-o", world.folder / "f.nii.gz", "--report", world.a, world.a, world.b],
            "--report a.nii.gz: a JSON report must end in .json.")


def test_evaluate_json_equal_to_the_prediction(capsys, world):
    refused(capsys, world.folder, ["evaluate", "--pred", world.soft, "--truth", world.a, "--json", world.soft],
            "--json soft.nii.gz: a JSON report must end in .json.")


def test_evaluate_json_equal_to_an_input_named_json(capsys, own):
    fake = own.folder / "truth.json"  # an input whose name looks like a report
    fake.write_bytes(own.a.read_bytes())
    refused(capsys, own.folder, ["evaluate", "--pred", own.soft, "--truth", fake, "--json", fake],
            "--json truth.json is also an input (--truth truth.json); writing it would replace that input, "
            "so choose another output name.")


def test_evaluate_json_that_is_a_folder(capsys, own):
    (own.folder / "r.json").mkdir()
    refused(capsys, own.folder, ["evaluate", "--pred", own.soft, "--truth", own.a, "--json", own.folder / "r.json"],
            "--json r.json is a folder; give a file name.")


def test_train_out_equal_to_the_image(capsys, world):
    refused(capsys, world.folder, ["train", "--image", world.scan, "--label", world.a, "--out", world.scan],
            "--out scan.nii.gz: a checkpoint (trained model) must end in .pt or .pth.")


def test_train_out_with_a_nifti_name(capsys, world):
    refused(capsys, world.folder, ["train", "--image", world.scan, "--label", world.a, "--out", world.folder / "m.nii.gz"],
            "--out m.nii.gz: a checkpoint (trained model) must end in .pt or .pth.")


def test_train_out_equal_to_the_init_checkpoint(capsys, world):
    refused(capsys, world.folder, ["train", "--image", world.scan, "--label", world.a, "--init", world.model,
                                   "--out", world.model],
            "--out model.pt is also an input (--init model.pt); writing it would replace that input, "
            "so choose another output name.")


def test_train_out_in_a_missing_folder(capsys, world):
    refused(capsys, world.folder, ["train", "--image", world.scan, "--label", world.a,
                                   "--out", world.folder / "gone" / "m.pt"],
            f"Cannot write m.pt: folder {world.folder / 'gone'} does not exist.")


def test_demo_out_that_is_a_file(capsys, world):
    refused(capsys, world.folder, ["demo", "--out", world.a],
            "--out a.nii.gz is a file; give a folder for the outputs.")


def test_the_guard_runs_before_any_reading(capsys, world):
    """A missing input is not even read when the output is refused: the output sentence comes first."""
    refused(capsys, world.folder, ["fuse", "-o", world.folder / "x.txt", world.folder / "missing.nii.gz", world.a],
            "-o x.txt: a NIfTI output must end in .nii or .nii.gz.")


def test_a_good_run_still_works_and_writes_with_umask_permissions(capsys, own):
    old = os.umask(0o022)
    try:
        run = cli(capsys, "fuse", "-m", "average", "-o", own.folder / "f.nii.gz", "--report", own.folder / "r.json",
                  own.a, own.b)
    finally:
        os.umask(old)
    assert run.status == 0 and run.err == ""
    for name in ("f.nii.gz", "r.json"):
        assert (own.folder / name).stat().st_mode & 0o777 == 0o644
    assert hidden(own.folder) == []
    assert {"a.nii.gz", "b.nii.gz", "f.nii.gz", "r.json"} <= set(digest(own.folder))


@pytest.mark.parametrize("kind", ["predict", "fuse"])
def test_leftovers_of_killed_runs_are_removed_and_reported(capsys, own, kind):
    from napari_softseg.io.atomic import temporary_name

    import subprocess
    import sys

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    stale = own.folder / temporary_name("out.nii.gz").replace(f"-{os.getpid()}-", f"-{dead}-")
    stale.write_bytes(b"x" * 3000)
    argv = (["predict", "-m", own.model, "-q", "-o", own.folder / "out.nii.gz", own.scan] if kind == "predict"
            else ["fuse", "-o", own.folder / "out.nii.gz", own.a, own.b])
    run = cli(capsys, *argv)
    assert run.status == 0
    assert run.err == f"note: Removed 1 temporary file (2.9 KiB) left in {own.folder} by interrupted runs.\n"
    assert hidden(own.folder) == []
