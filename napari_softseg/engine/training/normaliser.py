"""The stored normaliser of a NormReLU network trained with the batch-wide maximum.

Such a network predicts ``p = min(ReLU(x) / m, 1)`` with a stored ``m``
(:attr:`NormReLU.norm_max <napari_softseg.engine.model.NormReLU>`). The trainer sets it twice:

* at every validation, :func:`estimate_normaliser`: the expected maximum over a batch's
  structure slices, from the eval-mode maxima of the validation structure slices -- what a
  training batch divided by, without dropout or augmentation;
* after training, :func:`fit_by_loss` on the training and validation slices: the ``m`` that
  minimises the training loss in eval mode, a one-parameter "temperature scaling" of NormReLU,
  starting from the estimate above. This is the value the checkpoint keeps.

Measured (the same trained weights, unseen phantoms of the cohort): the fitted ``m`` gets the
lesion volume within -2.9 +- 1.3 % against -10.6 +- 2.0 % for the expected batch maximum (a
batch's maximum over 4 structure slices sits above a typical lesion core, so cores stay below
1); fitting on the validation phantom alone was worse than on the training phantoms (one
subject's contrast is not representative), hence training + validation. A running mean of the
training batch maxima was within 5 % of the expected batch maximum without dropout but 1.5-1.9x
too high with it; the maximum of each predicted volume gave a lesion-free scan p = 1 (12-29
false slices) and was rejected. Soft Dice has no voxel-wise loss to fit, so a NormReLU + Dice
network keeps the expected batch maximum.
"""

from __future__ import annotations

import math

import torch

__all__ = ["estimate_normaliser", "normaliser_grid", "loss_curve", "fit_by_loss", "best_of_curve"]

#: the fit searches ``[start / SPAN, start * SPAN]`` on a log grid of ``STEPS`` values, a step
#: of 3.9 % in ``m`` (the volume of partial-volume voxels moves by as much; the research runs of
#: measurements quoted above used 61 values, steps of 8 %)
SPAN, STEPS = 10.0, 121


def estimate_normaliser(slice_maxima: torch.Tensor, n_structure: int) -> float:
    """The expected maximum of ``n_structure`` entries of ``slice_maxima`` drawn at random
    without replacement: what a training batch with ``n_structure`` structure slices divides
    by. ``slice_maxima``: the largest ReLU'd score of each structure slice (one channel), in
    eval mode. Exact: with the values sorted, ``v_(1) <= ... <= v_(n)``, the largest of ``k``
    is ``v_(i)`` with probability ``C(i - 1, k - 1) / C(n, k)``. NaN when there is none."""
    v = torch.sort(slice_maxima.detach().flatten().double().cpu()).values
    n = v.numel()
    if n == 0:
        return float("nan")
    k = min(max(int(n_structure), 1), n)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    log_choose = lambda a, b: torch.lgamma(a + 1) - torch.lgamma(b + 1) - torch.lgamma(a - b + 1)  # noqa: E731
    log_p = log_choose(i - 1, torch.tensor(k - 1.0)) - log_choose(torch.tensor(float(n)), torch.tensor(float(k)))
    p = torch.where(i >= k, torch.exp(log_p), torch.zeros_like(i))
    return float((p * v).sum() / p.sum())


def normaliser_grid(start: float, span: float = SPAN, steps: int = STEPS) -> torch.Tensor:
    """The candidates of :func:`fit_by_loss`: ``steps`` values from ``start / span`` to
    ``start * span``, evenly spaced in log (float64)."""
    return start * torch.exp(torch.linspace(-math.log(span), math.log(span), steps, dtype=torch.float64))


@torch.no_grad()
def loss_curve(scores: torch.Tensor, targets: torch.Tensor, loss, grid: torch.Tensor,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """``sum(w * loss.elementwise(min(scores / m, 1), targets))`` for every ``m`` in ``grid``
    (float64, ``grid``'s length). Sums over any set of voxels add up, so the curve can be
    accumulated batch by batch and over processes.

    ``scores``: ReLU'd eval-mode logits, flat; only voxels with a score > 0 matter (every other
    voxel has ``p = 0`` for any ``m``). ``weights``: the training loss's weight of each voxel
    (``loss.weight_map`` of the whole slices, taken at the same voxels); None: all ones.
    """
    s = scores.detach().float().flatten()
    y = targets.detach().float().flatten().to(s.device)
    w = None if weights is None else weights.detach().float().flatten().to(s.device)
    keep = s > 0
    s, y, w = s[keep], y[keep], (None if w is None else w[keep])
    if s.numel() == 0:
        return torch.zeros(grid.numel(), dtype=torch.float64)
    sums = []
    for m in grid.tolist():  # summed on the device, read back once
        value = loss.elementwise(torch.clamp(s / m, max=1.0), y)
        sums.append((value * w).sum() if w is not None else value.sum())
    return torch.stack(sums).double().cpu()


def fit_by_loss(scores: torch.Tensor, targets: torch.Tensor, loss, *, start: float,
                weights: torch.Tensor | None = None, span: float = SPAN, steps: int = STEPS) -> float:
    """The ``m`` of :func:`normaliser_grid` (around ``start``) minimising :func:`loss_curve`;
    ``start`` itself when no score is positive, NaN when ``start`` is not a positive number.
    ``loss`` needs an ``elementwise(prediction, target)`` method
    (:class:`~napari_softseg.engine.losses.AdaptiveWingLoss`)."""
    if not (math.isfinite(start) and start > 0):
        return float("nan")
    grid = normaliser_grid(start, span, steps)
    return best_of_curve(grid, loss_curve(scores, targets, loss, grid, weights), start)


def best_of_curve(grid: torch.Tensor, curve: torch.Tensor, start: float) -> float:
    """The grid value where ``curve`` is lowest (the first of ties); ``start`` when the curve
    is flat (no voxel with a positive score)."""
    if not bool((curve != curve[0]).any()):
        return float(start)
    return float(grid[int(torch.argmin(curve))])
