"""Choosing the binarisation threshold of a soft prediction after training.

The thresholds :data:`THRESHOLDS` = 0.05, 0.10, ..., 0.95 are tried on the training and
validation volumes; each volume's Dice with its truth binarised at 0.5 (``truth >= 0.5``),
both binarised by the package's one rule (:func:`napari_softseg.labels.masks.binarize`),

.. math:: D_v(t) = \\frac{2 |P_v(t) \\cap T_v|}{|P_v(t)| + |T_v|}, \\qquad P_v(t) = \\{p \\ge t\\},

is averaged over the volumes (and over the foreground classes of a multi-class model), and
the threshold with the best mean wins; ties go to the **larger** threshold (the sparser
mask). A volume whose truth and prediction are both empty scores 1.

Sums are accumulated batch by batch (:class:`DiceAccumulator`) so predictions never need
to be held for whole volumes, and accumulators of several processes can be added
(:meth:`DiceAccumulator.tensors`) before :meth:`DiceAccumulator.dice`.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_softseg.labels.masks import binarize

__all__ = ["THRESHOLDS", "DiceAccumulator", "best_threshold", "search_threshold"]

#: the candidate thresholds, 0.05 to 0.95 in steps of 0.05
THRESHOLDS = np.round(np.arange(1, 20) * 0.05, 2)


class DiceAccumulator:
    """Per-volume, per-threshold, per-class sums ``|P ∩ T|``, ``|P|`` and ``|T|``.

    Each batch is counted on its own device in float32 (per slice, exact up to 2**24
    voxels; MPS has no float64) and added on the host in float64, so whole volumes of any
    size are counted exactly and no float64 tensor ever lives on the device.

    Parameters
    ----------
    n_volumes, n_classes : int
    thresholds : 1-D array, default :data:`THRESHOLDS`
    device : torch device of the predictions
    """

    def __init__(self, n_volumes: int, n_classes: int = 1, thresholds=THRESHOLDS, device="cpu") -> None:
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self._t = torch.as_tensor(self.thresholds, dtype=torch.float32, device=device)
        shape = (n_volumes, self.thresholds.size, n_classes)
        self.inter = torch.zeros(shape, dtype=torch.float64)
        self.pred = torch.zeros(shape, dtype=torch.float64)
        self.truth = torch.zeros((n_volumes, 1, n_classes), dtype=torch.float64)

    def update(self, prediction: torch.Tensor, truth: torch.Tensor, volume: torch.Tensor) -> None:
        """Add a batch: ``prediction`` and ``truth`` ``(N, K, H, W)``, ``volume`` ``(N,)``."""
        p = prediction.detach().float().flatten(2)  # (N, K, P)
        t = binarize(truth.detach().float().flatten(2))
        count, inter = [], []
        for threshold in self._t:
            mask = binarize(p, threshold)
            count.append(mask.sum(-1, dtype=torch.float32))
            inter.append((mask & t).sum(-1, dtype=torch.float32))
        vol = volume.to("cpu")
        self.inter.index_add_(0, vol, torch.stack(inter, dim=1).cpu().double())  # (N, T, K)
        self.pred.index_add_(0, vol, torch.stack(count, dim=1).cpu().double())
        self.truth.index_add_(0, vol, t.sum(-1, dtype=torch.float32)[:, None].cpu().double())

    def tensors(self) -> list[torch.Tensor]:
        """The sums, e.g. for ``torch.distributed.all_reduce``."""
        return [self.inter, self.pred, self.truth]

    def dice(self) -> np.ndarray:
        """``(V, T)`` mean-over-classes Dice of every volume at every threshold."""
        denom = self.pred + self.truth
        d = torch.where(denom > 0, 2.0 * self.inter / denom.clamp_min(1e-12), torch.ones_like(denom))
        return d.mean(dim=2).cpu().numpy()


def best_threshold(dice: np.ndarray, thresholds=THRESHOLDS) -> tuple[float, float]:
    """``(threshold, mean Dice)`` maximising the mean over volumes of ``dice`` ``(V, T)``;
    ties (within 1e-9) go to the larger threshold."""
    thresholds = np.asarray(thresholds, dtype=float)
    mean = np.asarray(dice, dtype=float).reshape(-1, thresholds.size).mean(axis=0)
    top = mean.max()
    best = int(np.flatnonzero(mean >= top - 1e-9).max())
    return float(thresholds[best]), float(mean[best])


def search_threshold(predictions, truths, thresholds=THRESHOLDS) -> tuple[float, float]:
    """Best threshold for lists of whole volumes (numpy arrays of equal shape per pair)."""
    acc = DiceAccumulator(len(predictions), 1, thresholds)
    for v, (p, t) in enumerate(zip(predictions, truths)):
        pt = torch.as_tensor(np.asarray(p, dtype=np.float32)).reshape(1, 1, -1, 1)
        tt = torch.as_tensor(np.asarray(t, dtype=np.float32)).reshape(1, 1, -1, 1)
        acc.update(pt, tt, torch.tensor([v]))
    return best_threshold(acc.dice(), thresholds)
