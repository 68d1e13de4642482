"""Training losses: Adaptive Wing (SoftSeg's regression loss) and soft Dice.

Both take the **activated** prediction (values in [0, 1], e.g. the output of
:class:`~napari_softseg.engine.model.NormReLU`) and a target of the same shape that may be soft
(any value in [0, 1]; slightly above 1 is tolerated).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from napari_softseg.errors import UserError

__all__ = ["AdaptiveWingLoss", "DiceLoss", "LOSSES"]

_REDUCTIONS = ("mean", "sum")


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise UserError(f"Loss reduction must be 'mean' or 'sum', got {reduction!r}.")
    return reduction


def _check_shapes(prediction: torch.Tensor, target: torch.Tensor) -> None:
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape.")


class AdaptiveWingLoss(nn.Module):
    r"""Adaptive Wing loss (Wang, Bo & Fuxin, ICCV 2019), SoftSeg's training loss.

    With :math:`\delta = |y - \hat y|` (target :math:`y`, prediction :math:`\hat y`):

    .. math::

        \mathrm{AWing}(y, \hat y) =
        \begin{cases}
            \omega \ln\!\left(1 + (\delta/\varepsilon)^{\alpha - y}\right)
                & \text{if } \delta < \theta \quad\text{(non-linear branch)} \\
            A\,\delta - C & \text{otherwise} \quad\text{(linear branch)}
        \end{cases}

    .. math::

        A = \omega \, \frac{1}{1 + (\theta/\varepsilon)^{\alpha - y}} \,(\alpha - y)\,
            (\theta/\varepsilon)^{\alpha - y - 1} \, \frac{1}{\varepsilon},
        \qquad
        C = \theta A - \omega \ln\!\left(1 + (\theta/\varepsilon)^{\alpha - y}\right)

    :math:`A` and :math:`C` make the loss and its first derivative continuous at
    :math:`\delta = \theta`. The exponent :math:`\alpha - y` adapts the curvature to the target:
    near background (:math:`y \approx 0`) the loss is flat around 0 (exponent > 2), near
    foreground (:math:`y \approx 1`) it behaves like the L1-ish Wing loss and keeps pushing
    small errors. SoftSeg's values: :math:`\omega = 8, \theta = 0.5, \varepsilon = 1,
    \alpha = 2.1` (Gros et al. 2021, section 2.3).

    **Weighted loss map** (Wang et al. 2019, section 4.3). Every element's loss is multiplied by

    .. math:: 1 + W \cdot \mathrm{dilate}_{3}(y > \tau)

    where :math:`\mathrm{dilate}_3` is a grey dilation with a window of 3 along every spatial
    axis (3x3 on slices), computed per sample and channel; the paper's values are
    :math:`W = 10`, :math:`\tau = 0.2`. Without it the loss of a sparse target (a few
    per cent of foreground, e.g. spinal-cord grey matter or small lesions) is dominated by
    the background, and a network with a normalised-ReLU output is driven to a score <= 0
    everywhere, where it has no gradient left and stays at an all-zero map (measured in
    ``benchmarks/bench_ablation.py``). ``foreground_weight=0`` gives the unweighted loss.

    Parameters
    ----------
    omega, theta, epsilon, alpha : float
        As in the formula.
    reduction : ``"mean"`` or ``"sum"``
        Average or sum over all elements (of the weighted loss). ivadomed (the SoftSeg
        reference code) sums; the mean makes the scale independent of batch and crop size.
    foreground_weight, foreground_threshold : float
        :math:`W` and :math:`\tau` of the weighted loss map.

    Notes
    -----
    ivadomed's ``AdapWingLoss`` meant to apply this map, but its map collapses to all ones
    (a boolean opening compared with 51), so it had no effect there.
    """

    def __init__(
        self,
        omega: float = 8.0,
        theta: float = 0.5,
        epsilon: float = 1.0,
        alpha: float = 2.1,
        reduction: str = "mean",
        foreground_weight: float = 10.0,
        foreground_threshold: float = 0.2,
    ) -> None:
        super().__init__()
        if not (math.isfinite(foreground_weight) and foreground_weight >= 0):
            raise UserError(f"Adaptive Wing foreground weight must be a finite number >= 0, got {foreground_weight}.")
        if omega <= 0 or theta <= 0 or epsilon <= 0:
            raise UserError("Adaptive Wing omega, theta and epsilon must be positive.")
        if alpha <= 1.0:
            raise UserError(f"Adaptive Wing alpha must exceed 1 (slightly above 2 is usual), got {alpha}.")
        self.omega = float(omega)
        self.theta = float(theta)
        self.epsilon = float(epsilon)
        self.alpha = float(alpha)
        self.reduction = _check_reduction(reduction)
        self.foreground_weight = float(foreground_weight)
        self.foreground_threshold = float(foreground_threshold)

    def extra_repr(self) -> str:
        return (
            f"omega={self.omega}, theta={self.theta}, epsilon={self.epsilon}, "
            f"alpha={self.alpha}, reduction={self.reduction!r}, "
            f"foreground_weight={self.foreground_weight}, foreground_threshold={self.foreground_threshold}"
        )

    def elementwise(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The unreduced loss, same shape as the inputs (float32)."""
        _check_shapes(prediction, target)
        prediction = prediction.float()
        target = target.to(prediction.dtype)
        delta = (target - prediction).abs()
        power = self.alpha - target
        ratio = self.theta / self.epsilon
        ratio_pow = torch.pow(torch.full_like(target, ratio), power)
        a = self.omega * (1.0 / (1.0 + ratio_pow)) * power * ratio_pow / ratio / self.epsilon
        c = self.theta * a - self.omega * torch.log1p(ratio_pow)
        small = delta < self.theta
        # the unused branch gets delta = 0 so that no large power enters torch.where's gradient
        nonlinear = self.omega * torch.log1p(torch.pow(torch.where(small, delta, 0.0) / self.epsilon, power))
        linear = a * delta - c
        return torch.where(small, nonlinear, linear)

    def weight_map(self, target: torch.Tensor) -> torch.Tensor:
        """``1 + W * dilate(target > tau)`` for ``(N, C, *spatial)`` targets with 1 to 3 spatial
        axes (float32, same shape); all ones when ``W`` is 0."""
        if self.foreground_weight == 0:
            return torch.ones_like(target, dtype=torch.float32)
        if not 3 <= target.ndim <= 5:
            raise ValueError(f"the weighted Adaptive Wing loss expects (N, C, ...) with 1 to 3 spatial axes, "
                             f"got shape {tuple(target.shape)}.")
        fg = (target > self.foreground_threshold).float()
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[target.ndim - 3]
        return 1.0 + self.foreground_weight * pool(fg, kernel_size=3, stride=1, padding=1)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.elementwise(prediction, target)
        if self.foreground_weight:
            loss = loss * self.weight_map(target)
        return loss.mean() if self.reduction == "mean" else loss.sum()


class DiceLoss(nn.Module):
    r"""Soft Dice loss (Milletari et al. 2016), with soft targets allowed.

    For each output channel :math:`k`:

    .. math:: L_k = 1 - \frac{2\sum_i p_{ik} t_{ik} + s}{\sum_i p_{ik} + \sum_i t_{ik} + s}

    where :math:`i` runs over the batch and all spatial positions (a "batch Dice", as in
    ivadomed) or, with ``per_sample=True``, over the positions of one sample only (one
    :math:`L` per sample and channel). Nothing is binarised: :math:`p` and :math:`t` may be
    any values in [0, 1]. With several channels (multi-class, background first) every channel
    contributes one term; ``include_background=False`` drops channel 0.

    Parameters
    ----------
    smooth : float
        :math:`s`, avoids 0/0 for empty maps (an empty prediction of an empty target scores 0).
    reduction : ``"mean"`` or ``"sum"``
        How the per-channel (per-sample) terms are combined.
    per_sample : bool
        One Dice per sample instead of one over the whole batch.
    include_background : bool
        Keep channel 0 when there are several channels.
    """

    def __init__(
        self,
        smooth: float = 1.0,
        reduction: str = "mean",
        per_sample: bool = False,
        include_background: bool = True,
    ) -> None:
        super().__init__()
        if smooth < 0 or not math.isfinite(smooth):
            raise UserError(f"Dice smooth term must be a finite number >= 0, got {smooth}.")
        self.smooth = float(smooth)
        self.reduction = _check_reduction(reduction)
        self.per_sample = bool(per_sample)
        self.include_background = bool(include_background)

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}, reduction={self.reduction!r}, per_sample={self.per_sample}"

    def dice(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Soft Dice coefficients, shape ``(C,)`` or ``(N, C)`` with ``per_sample``."""
        _check_shapes(prediction, target)
        if prediction.ndim < 2:
            raise ValueError("DiceLoss expects (N, C, ...) tensors.")
        p = prediction.float()
        t = target.to(p.dtype)
        if not self.include_background and p.shape[1] > 1:
            p, t = p[:, 1:], t[:, 1:]
        if self.per_sample:
            dims = tuple(range(2, p.ndim))
        else:
            p, t = p.transpose(0, 1), t.transpose(0, 1)
            dims = tuple(range(1, p.ndim))
        inter = (p * t).sum(dim=dims) if dims else p * t
        total = (p.sum(dim=dims) + t.sum(dim=dims)) if dims else p + t
        return (2.0 * inter + self.smooth) / (total + self.smooth).clamp_min(torch.finfo(p.dtype).tiny)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = 1.0 - self.dice(prediction, target)
        return loss.mean() if self.reduction == "mean" else loss.sum()


#: name -> loss class (instantiated with default arguments by presets).
LOSSES: dict[str, type[nn.Module]] = {
    "adaptive_wing": AdaptiveWingLoss,
    "dice": DiceLoss,
}
