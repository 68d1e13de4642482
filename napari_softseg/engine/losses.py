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

__all__ = ["AdaptiveWingLoss", "DiceLoss", "LOSSES", "ScoreMargin"]

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
    :math:`W = 10`, :math:`\tau = 0.2`. ``foreground_weight=0`` gives the unweighted
    (uniform) loss, what the thesis effectively trained with (see the note) and what the
    ``normrelu`` presets use (:attr:`~napari_softseg.engine.presets.Preset.foreground_weight`):
    with the batch-wide NormReLU, no dropout and :class:`ScoreMargin` it no longer collapses
    (0 all-zero runs in 10 on spinal-cord grey matter) and leaves less on the background of
    sparse targets than W = 10 (lesion phantom: p summed over lesion-free slices 0.07 % vs
    0.6 % of the lesion volume, false lesions 0 % vs 4 %), while W = 10 detects more small
    lesions (96 % vs 89 %) by over-segmenting around them. Under the older design (per-slice
    NormReLU, dropout 0.3) the uniform loss drove sparse targets to a score <= 0 everywhere,
    an all-zero map, in 3 of 5 spinal-cord folds; the weight map prevented that.

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


class ScoreMargin(nn.Module):
    r"""Two hinges on the **logits** of a NormReLU network, added to its loss: the background
    gets a margin below zero, the structure stays above it.

    .. math:: L = \lambda_b\,\mathrm{mean}\big([y = 0]\,\mathrm{ReLU}(z + \delta)\big)
              + \lambda_f\,\mathrm{mean}\big(y\,\mathrm{ReLU}(\delta - z)\big),
              \qquad z = x / s

    with :math:`s` the batch's normaliser (the maximum of :math:`\mathrm{ReLU}(x)` over the
    batch, per channel, as NormReLU's ``"batch"`` scope divides by; no gradient flows through
    it), floored by ``floor`` (the running mean of the training batch maxima,
    :attr:`NormReLU.running_max <napari_softseg.engine.model.NormReLU>`) so that it cannot
    blow up when a batch's maximum is tiny. Defaults: :math:`\lambda_b = \lambda_f = 1`,
    :math:`\delta = 0.1`.

    Why (measured on the lesion phantom cohort and spinal-cord grey matter): Adaptive Wing
    on :math:`p = \mathrm{ReLU}(x)/m` cannot see a negative logit and barely penalises a small
    output where :math:`y = 0` (it grows like :math:`\omega\,p^{2.1}`), so a trained network
    leaves its background logits just below 0 (mean -0.4, 2 % of them above 0) and any shift
    (another subject, noise) spills a low-p haze into slices without the structure. The
    background hinge builds the margin: haze voxels 10 k -> 0.8 k, p summed over lesion-free
    slices 31 % -> 3 % of the lesion volume. Alone it can push every score below 0 (an all-zero
    network, 1 run in 5 on cord GM); the structure hinge keeps such a network trainable, as it
    still has a gradient where ReLU has none: with both, 0 all-zero runs in 10 on cord GM with
    the uniform loss.
    """

    def __init__(self, background: float = 1.0, foreground: float = 1.0, margin: float = 0.1) -> None:
        super().__init__()
        for value, what in ((background, "background weight"), (foreground, "structure weight"), (margin, "margin")):
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"Score margin {what} must be a finite number >= 0, got {value}.")
        self.background, self.foreground, self.margin = float(background), float(foreground), float(margin)

    def extra_repr(self) -> str:
        return f"background={self.background}, foreground={self.foreground}, margin={self.margin}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor, floor: torch.Tensor | None = None) -> torch.Tensor:
        _check_shapes(logits, target)
        logits, target = logits.float(), target.float()
        scale = F.relu(logits).detach().transpose(0, 1).flatten(1).amax(dim=1)
        if floor is not None:  # no test of its value here: that would wait for an accelerator
            scale = torch.maximum(scale, floor.detach().to(scale))
        z = logits / scale.clamp_min(1e-6).view((1, -1) + (1,) * (logits.ndim - 2))
        loss = self.background * ((target <= 0) * F.relu(z + self.margin)).mean()
        if self.foreground:
            loss = loss + self.foreground * (target * F.relu(self.margin - z)).mean()
        return loss
