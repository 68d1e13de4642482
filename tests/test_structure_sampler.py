"""The pieces of the batch-wide NormReLU recipe, by hand: the structure sampler, the
ScoreMargin hinges and the stored normaliser's estimate and fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_softseg.engine.losses import AdaptiveWingLoss, ScoreMargin
from napari_softseg.engine.training.normaliser import (
    estimate_normaliser,
    fit_by_loss,
    loss_curve,
    normaliser_grid,
)
from napari_softseg.engine.training.sampler import StructureBatchSampler
from napari_softseg.errors import UserError

# ----------------------------------------------------------------------------- the sampler

INDICES = np.arange(100, 120)  # sample indices 100..119: 7 with the structure, 13 without
HAS = np.isin(INDICES, [101, 103, 104, 108, 111, 115, 119])


def test_every_batch_mixes_structure_and_empty_slices_as_asked():
    sampler = StructureBatchSampler(INDICES, HAS, batch_size=4, empty_fraction=0.5, seed=3)
    assert (sampler.n_fg, sampler.n_bg, sampler.steps_per_epoch) == (2, 2, 4)  # ceil(7 / 2) steps
    structure = set(INDICES[HAS].tolist())
    empty_seen = []
    for _ in range(3):
        batches = sampler.epoch()
        assert len(batches) == 4
        seen = []
        for b in batches:
            assert b.size == 4 and sum(int(i) in structure for i in b) == 2  # structure share 2/4
            seen += [int(i) for i in b if int(i) in structure]
            empty_seen += [int(i) for i in b if int(i) not in structure]
        assert set(seen) == structure  # every structure slice in every epoch (one topped up twice)
        assert len(seen) == 8
    # structure-free slices are drawn without replacement and cycled: 24 draws cover all 13
    assert set(empty_seen) == set(INDICES[~HAS].tolist())
    assert len(set(empty_seen[:12])) == 12  # the first 6 batches: no repeat (a batch is shuffled)


@pytest.mark.parametrize("batch, fraction, n_fg", [(8, 0.5, 4), (8, 0.25, 6), (4, 0.75, 1), (4, 0.9, 1), (1, 0.5, 1)])
def test_the_structure_share_follows_the_empty_fraction(batch, fraction, n_fg):
    sampler = StructureBatchSampler(INDICES, HAS, batch, fraction, seed=0)
    assert sampler.n_fg == n_fg and sampler.n_bg == batch - n_fg  # n_fg = max(1, round(B (1 - fraction)))
    structure = set(INDICES[HAS].tolist())
    for b in sampler.epoch():
        assert sum(int(i) in structure for i in b) == n_fg


def test_dense_targets_fill_batches_with_structure_and_empty_labels_are_refused():
    dense = StructureBatchSampler(INDICES, np.ones(20, bool), batch_size=8, empty_fraction=0.5)
    assert dense.n_fg == 8 and dense.steps_per_epoch == 3
    drawn = np.concatenate(dense.epoch())
    assert drawn.size == 24 and set(drawn.tolist()) == set(INDICES.tolist())  # all 20, 4 topped up
    with pytest.raises(UserError, match="No training slice holds the structure"):
        StructureBatchSampler(INDICES, np.zeros(20, bool), batch_size=4)


def test_processes_take_disjoint_equal_shares():
    ranks = [StructureBatchSampler(INDICES, HAS, 4, 0.5, seed=5, rank=r, world_size=2) for r in range(2)]
    assert [s.steps_per_epoch for s in ranks] == [2, 2]  # 7 structure slices: 3 each, one left out
    for _ in range(2):
        parts = [set(np.concatenate(s.epoch()).tolist()) for s in ranks]
        assert not parts[0] & parts[1]
        assert all(len(p & set(INDICES[HAS].tolist())) == 3 for p in parts)


# ----------------------------------------------------------------------------- ScoreMargin


def test_score_margin_by_hand():
    x = torch.tensor([[[[-0.05, 2.0], [-0.5, -0.2]]]], requires_grad=True)
    y = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    loss = ScoreMargin()(x, y)
    # scale 2: z = (-0.025, 1, -0.25, -0.1); background relu(z + 0.1) = (0.075, -, 0, -),
    # structure y relu(0.1 - z) = (-, 0, -, 0.2); each term a mean over the 4 voxels
    assert float(loss.detach()) == pytest.approx(0.075 / 4 + 0.2 / 4)
    loss.backward()
    assert x.grad[0, 0, 0, 0] == pytest.approx(0.125)  # background within the margin: pushed down
    assert x.grad[0, 0, 1, 0] == 0  # background below -margin: left alone
    assert x.grad[0, 0, 1, 1] == pytest.approx(-0.125)  # structure below +margin: pushed up
    assert x.grad[0, 0, 0, 1] == 0  # the scale carries no gradient
    # a floor above the batch maximum sets the scale (4): z = (-0.0125, 0.5, -0.125, -0.05)
    floored = ScoreMargin(background=1.0, foreground=2.0)(x, y, floor=torch.tensor([4.0]))
    assert float(floored.detach()) == pytest.approx(0.0875 / 4 + 2.0 * 0.15 / 4)
    # soft targets weigh the structure hinge; only y = 0 is background
    soft = torch.tensor([[[[0.0, 1.0], [0.0, 0.5]]]])
    assert float(ScoreMargin()(x.detach(), soft)) == pytest.approx(0.075 / 4 + 0.5 * 0.2 / 4)
    with pytest.raises(UserError, match="margin must be a finite number >= 0"):
        ScoreMargin(margin=-0.1)


# ----------------------------------------------------------------------------- the normaliser


def test_estimate_normaliser_is_the_expected_batch_maximum():
    maxima = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert estimate_normaliser(maxima, 4) == 4.0 and estimate_normaliser(maxima, 10) == 4.0
    # pairs without replacement: maxima 2, 3, 4, 3, 4, 4 -> 20 / 6
    assert estimate_normaliser(maxima[[2, 0, 3, 1]], 2) == pytest.approx(20 / 6, rel=1e-12)  # any order
    assert estimate_normaliser(maxima, 1) == pytest.approx(2.5, rel=1e-12)
    # against drawing: 200 values, batches of 4 structure slices
    values = torch.rand(200, generator=torch.Generator().manual_seed(0))
    draws = torch.stack([values[torch.randperm(200, generator=torch.Generator().manual_seed(s))[:4]].max()
                         for s in range(4000)])
    assert estimate_normaliser(values, 4) == pytest.approx(float(draws.mean()), abs=3 * float(draws.std()) / 4000**0.5)
    assert math.isnan(estimate_normaliser(torch.zeros(0), 2))


def test_fit_by_loss_recovers_a_known_normaliser():
    """Scores made as y * m (cores above m, which saturate at 1): the loss is 0 at m exactly,
    and the fit lands within one grid step (4 %) from a start 1.7 m away."""
    rng = np.random.default_rng(0)
    m = 3.0
    y = np.r_[rng.uniform(0.05, 0.95, 500), np.ones(300), np.zeros(2000)].astype(np.float32)
    scores = y * m
    scores[500:800] *= rng.uniform(1.0, 1.5, 300).astype(np.float32)  # saturated cores
    scores[800:900] = -rng.uniform(0, 1, 100)  # background below zero: p = 0 for any m
    loss = AdaptiveWingLoss(foreground_weight=0.0)
    fitted = fit_by_loss(torch.from_numpy(scores), torch.from_numpy(y), loss, start=1.7 * m)
    step = (10.0 ** (2 / 120))
    assert m / step <= fitted <= m * step
    # the curve is a sum over voxels: two halves add up to the whole
    grid = normaliser_grid(1.7 * m)
    s, t = torch.from_numpy(scores), torch.from_numpy(y)
    whole = loss_curve(s, t, loss, grid)
    torch.testing.assert_close(loss_curve(s[:1000], t[:1000], loss, grid) + loss_curve(s[1000:], t[1000:], loss, grid),
                               whole, rtol=1e-9, atol=1e-6)
    assert grid.numel() == 121 and float(grid[0]) == pytest.approx(0.17 * m) and float(grid[-1]) == pytest.approx(17 * m)
    # nothing positive: the start stays; a start that is not a positive number gives NaN
    assert fit_by_loss(torch.full((5,), -1.0), torch.ones(5), loss, start=2.0) == 2.0
    assert math.isnan(fit_by_loss(s, t, loss, start=0.0))
