"""Fixtures of the bad-input catalogue: the tiny files, built once per run."""

from __future__ import annotations

import pytest

from bad_inputs.harness import build_world


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """Tiny files shared by the cases that must leave them unchanged (each case checks it)."""
    return build_world(tmp_path_factory.mktemp("bad-inputs-world"))


@pytest.fixture
def own(world, tmp_path):
    """A private copy of the tiny files, for cases that add links or outputs."""
    return world.copy(tmp_path / "own")
