"""Random training patches: a smaller in-plane window of each training slice, centred on the
structure when the slice holds some.

Training on patches instead of whole slices makes each step cheaper by the ratio of their
areas (a 64x64 patch of a 144x184 slice: 6.5x fewer pixels) while the network, being fully
convolutional, still predicts whole slices. A patch of a slice that holds structure is
centred on one of its structure pixels drawn at random, shifted by up to a quarter of the
patch size, so the structure need not sit in the middle; a patch of a structure-free slice
lies anywhere in the slice. Validation, the threshold search and the output normaliser use
whole slices.
"""

from __future__ import annotations

import torch

__all__ = ["random_patches"]


def _corner(centre: int, size: int, extent: int, jitter: int, generator: torch.Generator) -> int:
    shift = int(torch.randint(-jitter, jitter + 1, (1,), generator=generator)) if jitter else 0
    return max(0, min(extent - size, centre - size // 2 + shift))


def random_patches(x: torch.Tensor, y: torch.Tensor, size: tuple[int, int],
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``size`` window per sample of images ``x`` (N, C, H, W) and targets ``y``
    (N, K, H, W), the same window for both; ``generator`` (on the CPU) draws the windows.

    A sample whose target has a positive value somewhere gets a window around one of those
    pixels (drawn uniformly, then shifted by up to ``size // 4``); the others a uniformly
    placed window. ``size`` must fit in (H, W)."""
    ph, pw = int(size[0]), int(size[1])
    n, _, h, w = x.shape
    if ph > h or pw > w:
        raise ValueError(f"patch {ph}x{pw} does not fit in slices of {h}x{w}")
    if (ph, pw) == (h, w):
        return x, y
    structure = (y > 0).any(dim=1)  # (N, H, W)
    xs, ys = [], []
    for i in range(n):
        where = torch.nonzero(structure[i]).cpu()
        if where.shape[0]:
            r, c = (int(v) for v in where[int(torch.randint(where.shape[0], (1,), generator=generator))])
            top, left = _corner(r, ph, h, ph // 4, generator), _corner(c, pw, w, pw // 4, generator)
        else:
            top = int(torch.randint(h - ph + 1, (1,), generator=generator))
            left = int(torch.randint(w - pw + 1, (1,), generator=generator))
        xs.append(x[i, :, top : top + ph, left : left + pw])
        ys.append(y[i, :, top : top + ph, left : left + pw])
    return torch.stack(xs), torch.stack(ys)
