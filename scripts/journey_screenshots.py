"""The screenshots of the user's journey (``docs/images/journey_<n>_<step>.png``).

Runs ``tests/test_journey.py`` (File > Open, paint two raters, fuse, train 2 epochs,
Segment, review, export, every dock from the Plugins menu) with the window shown, lets it
write one screenshot per step into a temporary folder, and copies them to ``docs/images``
once the test has passed (the test run itself writes nothing into the repository).

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/journey_screenshots.py [--out docs/images]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"), help="folder for the PNG files")
    args = parser.parse_args(argv)
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="journey-shots-") as tmp:
        env = dict(os.environ, NAPARI_SOFTSEG_JOURNEY_SHOTS=tmp)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_journey.py"]
        if subprocess.run(cmd, cwd=ROOT, env=env).returncode != 0:
            print("The journey test failed: no screenshot copied.", file=sys.stderr)
            return 1
        shots = sorted(Path(tmp).glob("journey_*.png"))
        if not shots:
            print("The journey test wrote no screenshot.", file=sys.stderr)
            return 1
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("journey_*.png"):
            old.unlink()
        for shot in shots:
            shutil.copyfile(shot, out / shot.name)
            print(out / shot.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
