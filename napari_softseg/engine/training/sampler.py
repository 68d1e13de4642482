"""Training batches that always hold the structure, for NormReLU's batch-wide maximum.

A NormReLU network with ``scope="batch"`` (:class:`napari_softseg.engine.model.NormReLU`)
divides its scores by the largest score of the batch. A batch must therefore hold at least
one slice with the structure: a batch of structure-free slices would be divided by the
largest score of an empty slice, which is then pushed up to 1 instead of down to 0.
Structure-free slices are still needed (they teach the network to output 0 where there is
nothing), so every batch mixes the two:

* ``n_fg = max(1, round(B * (1 - empty_fraction)))`` slices with the structure (any label
  > 0 before augmentation) and ``B - n_fg`` without; with no structure-free slice at all
  (dense targets), batches hold only structure slices;
* an epoch shows every structure slice once, in a new random order; the structure-free
  slices are drawn without replacement and cycled over the epochs, so all are seen;
* the epoch has ``ceil(structure slices / n_fg)`` steps (the last batch is topped up with
  other structure slices).

``empty_fraction = 0.5`` gives every batch what ivadomed's ``BalancedSampler`` gives on
average (both classes weighted equally); with it the lesion phantom's structure-free slices
stayed free of false lesions (no lesion-free slice reached p >= 0.5, 0.07 % of the
lesion volume in them). At batch size 1 every batch is one structure slice: a structure-free
slice alone in a batch would be normalised by its own maximum.

Under torchrun each process takes an equal, disjoint share of every epoch's structure slices
(the remainder is left out that epoch, as :func:`~napari_softseg.engine.training.distributed.shard`
does) and a fixed disjoint share of the structure-free ones, so the processes run the same
number of steps.
"""

from __future__ import annotations

import numpy as np

from napari_softseg.errors import UserError

__all__ = ["StructureBatchSampler"]


class StructureBatchSampler:
    """Index batches for one epoch at a time (see the module docstring).

    Parameters
    ----------
    indices : array of int
        Training sample indices.
    has_structure : array of bool
        Per entry of ``indices``: the slice holds the structure.
    batch_size : int
    empty_fraction : float in [0, 1)
        Share of structure-free slices in a batch (when there are any).
    seed : int
        The same in every process: they draw the same epoch orders and take their shares.
    rank, world_size : int
        This process and the number of processes (torchrun).
    """

    def __init__(self, indices, has_structure, batch_size: int, empty_fraction: float = 0.5, seed: int = 0,
                 *, rank: int = 0, world_size: int = 1) -> None:
        indices = np.asarray(indices, dtype=np.int64)
        has = np.asarray(has_structure, dtype=bool)
        if indices.shape != has.shape:
            raise ValueError("indices and has_structure differ in length")
        if not 0.0 <= empty_fraction < 1.0:
            raise ValueError(f"empty_fraction must lie in [0, 1), got {empty_fraction}")
        if not has.any():
            raise UserError("No training slice holds the structure (every label is empty there), "
                            "so there is nothing to learn; check the labels.")
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)
        self.fg = indices[has]
        self._shared = np.random.default_rng([seed, 0])  # the same in every process
        self._own = np.random.default_rng([seed, 1 + self.rank])
        self.bg = self._share(indices[~has][self._shared.permutation(int((~has).sum()))])
        self._bg_queue: list[int] = []
        n_fg = max(1, int(round(self.batch_size * (1.0 - empty_fraction))))
        self.n_fg = self.batch_size if self.bg.size == 0 else min(n_fg, self.batch_size)
        self.n_bg = self.batch_size - self.n_fg

    def _share(self, order: np.ndarray) -> np.ndarray:
        """This process's part of ``order``: equal and disjoint, or all of it when there are
        fewer entries than processes."""
        if self.world_size == 1 or order.size < self.world_size:
            return order
        usable = order.size // self.world_size * self.world_size
        return order[:usable][self.rank :: self.world_size]

    @property
    def fg_per_epoch(self) -> int:
        """Structure slices this process trains on per epoch."""
        return self.fg.size if self.fg.size < self.world_size else self.fg.size // self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.fg_per_epoch // self.n_fg)

    def _empty(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if not self._bg_queue:
                self._bg_queue = list(self._own.permutation(self.bg))
            out.append(int(self._bg_queue.pop()))
        return out

    def epoch(self) -> list[np.ndarray]:
        """The batches of the next epoch, each with ``n_fg`` structure slices."""
        fg = self._share(self._shared.permutation(self.fg))
        batches = []
        for s in range(self.steps_per_epoch):
            chunk = [int(i) for i in fg[s * self.n_fg : (s + 1) * self.n_fg]]
            if len(chunk) < self.n_fg:  # the last batch: top up with other structure slices
                others = np.setdiff1d(fg, chunk) if fg.size > len(chunk) else fg
                extra = self._own.choice(others, self.n_fg - len(chunk), replace=others.size < self.n_fg - len(chunk))
                chunk += [int(i) for i in extra]
            batch = np.asarray(chunk + self._empty(self.n_bg), dtype=np.int64)
            batches.append(self._own.permutation(batch))
        return batches
