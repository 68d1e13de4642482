"""``napari-softseg train`` data-parallel under torchrun: two CPU processes (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from napari_softseg.io.nifti import read_nifti, write_nifti


@pytest.mark.slow
def test_two_process_torchrun_training(shared_data, tmp_path):
    bet = read_nifti(shared_data / "fast_t1" / "bet.nii.gz")
    gm = read_nifti(shared_data / "fast_t1" / "pve_1.nii.gz")
    box = (slice(40, 104), slice(50, 114), slice(60, 70))  # away from bet's artificial spheres
    write_nifti(tmp_path / "img.nii.gz", bet.data[box], affine=bet.affine)
    write_nifti(tmp_path / "gm.nii.gz", gm.data[box].astype(np.float32), affine=bet.affine)
    out = tmp_path / "ddp.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "napari_softseg", "train", "--image", str(tmp_path / "img.nii.gz"), "--label", str(tmp_path / "gm.nii.gz"),
        "--epochs", "2", "--depth", "2", "--features", "4", "--batch-size", "2", "--device", "cpu", "--out", str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Finished after 2 epochs") == 1  # only rank 0 reports

    from napari_softseg.engine.checkpoint import build_model, load_checkpoint

    state, cfg = load_checkpoint(out)
    build_model(cfg, state)
    info = cfg["training"]["distributed"]
    # 10 slices, 2 of them (one slab) held out: 8 training slices, 4 per process, no overlap
    assert cfg["training"]["n_train_slices"] == 8
    assert info == {"world_size": 2, "samples_per_rank": [4, 4], "shards_disjoint": True}


def test_shards_are_disjoint_equal_and_cover_all_but_the_remainder():
    import torch

    from napari_softseg.engine.training.distributed import DistContext, shard

    order = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    parts = [shard(order, DistContext(rank=r, world_size=3)) for r in range(3)]
    assert [p.numel() for p in parts] == [3, 3, 3]
    joined = torch.cat(parts).tolist()
    assert len(set(joined)) == 9 and set(joined) == set(order[:9].tolist())
    assert torch.equal(shard(order, DistContext()), order)
