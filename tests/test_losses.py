"""Adaptive Wing and soft Dice against values worked out by hand."""

import math

import pytest
import torch

from napari_softseg.errors import UserError
from napari_softseg.engine.losses import LOSSES, AdaptiveWingLoss, DiceLoss


def t(*values):
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, -1)


def test_adaptive_wing_nonlinear_branch_by_hand():
    # omega=1, alpha=2, epsilon=1: y=0 gives exponent 2 -> ln(1 + delta^2)
    loss = AdaptiveWingLoss(omega=1, theta=0.5, epsilon=1, alpha=2, reduction="sum", foreground_weight=0)
    assert loss(t(0.2), t(0.0)).item() == pytest.approx(math.log(1.04), rel=1e-6)
    # y=1 gives exponent 1 -> ln(1 + delta)
    assert loss(t(0.7), t(1.0)).item() == pytest.approx(math.log(1.3), rel=1e-6)
    assert loss(t(0.0), t(0.0)).item() == 0.0


def test_adaptive_wing_linear_branch_by_hand():
    # omega=1, alpha=2, theta=0.5, epsilon=1, y=1 (exponent 1):
    # A = 1/(1+0.5) * 1 * 0.5**0 = 2/3 ; C = 0.5*A - ln(1.5) = 1/3 - ln 1.5
    # delta = 0.8: A*0.8 - C = 0.2 + ln 1.5
    loss = AdaptiveWingLoss(omega=1, theta=0.5, epsilon=1, alpha=2, reduction="sum", foreground_weight=0)
    assert loss(t(0.2), t(1.0)).item() == pytest.approx(0.2 + math.log(1.5), rel=1e-6)
    # delta exactly theta falls in the linear branch and equals the non-linear limit ln(1.5)
    assert loss(t(0.5), t(1.0)).item() == pytest.approx(math.log(1.5), rel=1e-6)


def test_adaptive_wing_paper_defaults_and_reductions():
    om, th, al = 8.0, 0.5, 2.1

    def ref(y, yh):  # independent scalar implementation of Wang et al. 2019, eq. 6
        d, p = abs(y - yh), al - y
        if d < th:
            return om * math.log(1 + d**p)
        a = om / (1 + th**p) * p * th ** (p - 1)
        return a * d - (th * a - om * math.log(1 + th**p))

    pred = [0.8, 0.3, 0.2, 0.9, 0.5]
    true = [1.0, 0.0, 1.0, 0.3, 0.5]
    expected = [ref(y, yh) for y, yh in zip(true, pred)]
    # a few by hand: y=1, yhat=0.8 -> 8 ln(1 + 0.2**1.1)
    assert expected[0] == pytest.approx(8 * math.log(1 + 0.2**1.1))
    mean = AdaptiveWingLoss(foreground_weight=0)(t(*pred), t(*true)).item()
    total = AdaptiveWingLoss(reduction="sum", foreground_weight=0)(t(*pred), t(*true)).item()
    assert total == pytest.approx(sum(expected), rel=1e-5)
    assert mean == pytest.approx(sum(expected) / 5, rel=1e-5)
    default = AdaptiveWingLoss()
    assert (default.omega, default.theta, default.epsilon, default.alpha) == (8, 0.5, 1, 2.1)
    assert (default.foreground_weight, default.foreground_threshold) == (10, 0.2)
    # weighted map (W=10, tau=0.2) on this 1-D row: foreground y > 0.2 at positions 0, 2, 3;
    # dilated by a window of 3 every position is within one of them -> every weight is 11
    assert default(t(*pred), t(*true)).item() == pytest.approx(11 * sum(expected) / 5, rel=1e-5)


def test_adaptive_wing_weighted_loss_map_by_hand():
    loss = AdaptiveWingLoss(reduction="sum")  # W = 10, tau = 0.2
    # 2-D target: one foreground pixel (0.9) at (1, 1) of a 4x5 slice, a 0.2 pixel (not > tau) at (3, 4)
    target = torch.zeros(1, 1, 4, 5)
    target[0, 0, 1, 1] = 0.9
    target[0, 0, 3, 4] = 0.2
    weight = loss.weight_map(target)[0, 0]
    expected = torch.ones(4, 5)
    expected[0:3, 0:3] = 11.0  # the 3x3 neighbourhood of (1, 1)
    assert torch.equal(weight, expected)
    # a prediction error only at (3, 4) (weight 1) and only at (2, 2) (weight 11)
    pred = target.clone()
    pred[0, 0, 3, 4] = 0.0
    unweighted = AdaptiveWingLoss(reduction="sum", foreground_weight=0)
    assert loss(pred, target).item() == pytest.approx(unweighted(pred, target).item(), rel=1e-6)
    pred = target.clone()
    pred[0, 0, 2, 2] = 0.3
    assert loss(pred, target).item() == pytest.approx(11 * unweighted(pred, target).item(), rel=1e-6)
    assert unweighted(pred, target).item() == pytest.approx(8 * math.log(1 + 0.3**2.1), rel=1e-6)
    # per sample and channel: the foreground of sample 0 does not weight sample 1
    two = torch.zeros(2, 2, 4, 5)
    two[0, 0, 1, 1] = 1.0
    w = loss.weight_map(two)
    assert w[0, 0].max() == 11 and w[0, 1].max() == 1 and w[1].max() == 1
    # 3-D targets dilate along all three axes
    vol = torch.zeros(1, 1, 3, 3, 3)
    vol[0, 0, 1, 1, 1] = 1.0
    assert torch.equal(loss.weight_map(vol), torch.full((1, 1, 3, 3, 3), 11.0))
    with pytest.raises(UserError):
        AdaptiveWingLoss(foreground_weight=-1)
    with pytest.raises(UserError):
        AdaptiveWingLoss(foreground_weight=float("nan"))


def test_adaptive_wing_continuous_and_finite_gradient():
    loss = AdaptiveWingLoss(reduction="sum", foreground_weight=0)
    target = torch.tensor([0.0, 0.37, 1.0, 0.0])
    below = loss(target + torch.tensor([0.5 - 1e-5] * 4) * torch.tensor([1, 1, -1, 1]), target)
    above = loss(target + torch.tensor([0.5 + 1e-5] * 4) * torch.tensor([1, 1, -1, 1]), target)
    assert below.item() == pytest.approx(above.item(), abs=1e-3)
    pred = torch.tensor([0.0, 0.37, 0.1, 0.9], requires_grad=True)
    loss(pred, target).backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[0].item() == 0.0 and pred.grad[1].item() == 0.0  # zero error, zero gradient


def test_soft_dice_by_hand():
    pred = t(0.5, 1.0, 0.0, 0.25)
    target = t(0.5, 0.5, 1.0, 0.0)
    inter = 0.25 + 0.5  # sum p*t
    total = 1.75 + 2.0
    dice = DiceLoss(smooth=0.0)
    assert dice(pred, target).item() == pytest.approx(1 - 2 * inter / total, rel=1e-6)
    assert DiceLoss(smooth=1.0)(pred, target).item() == pytest.approx(1 - (2 * inter + 1) / (total + 1), rel=1e-6)
    assert DiceLoss(smooth=1.0)(torch.zeros(1, 1, 4), torch.zeros(1, 1, 4)).item() == 0.0


def test_dice_multiclass_per_sample_and_reduction():
    # two samples, two channels, two voxels
    pred = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [0.5, 0.5]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    per = DiceLoss(smooth=0.0, per_sample=True, reduction="sum")(pred, target).item()
    # sample 0: perfect (0, 0); sample 1: each channel 2*0.5/(1+1) = 0.5 -> losses 0.5, 0.5
    assert per == pytest.approx(1.0)
    batch = DiceLoss(smooth=0.0, reduction="mean")(pred, target).item()
    # channel 0: inter = 1 + 0.5, sum p = 2, sum t = 2 -> dice 3/4 ; channel 1 the same
    assert batch == pytest.approx(1 - 3 / 4, rel=1e-6)
    no_bg = DiceLoss(smooth=0.0, include_background=False, reduction="sum")(pred, target).item()
    assert no_bg == pytest.approx(1 - 3 / 4, rel=1e-6)


def test_registry_and_errors():
    assert LOSSES == {"adaptive_wing": AdaptiveWingLoss, "dice": DiceLoss}
    with pytest.raises(UserError):
        AdaptiveWingLoss(reduction="median")
    with pytest.raises(UserError):
        DiceLoss(reduction="none")
    with pytest.raises(ValueError):
        AdaptiveWingLoss()(torch.zeros(1, 1, 3), torch.zeros(1, 1, 4))
