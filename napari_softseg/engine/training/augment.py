"""Batched random affine augmentation on the training device, soft-label preserving.

SoftSeg's augmentation (Gros et al. 2021, section 2.4): random rotation of ±20°, translation
of ±3 % of the image size and scaling of ±10 %, drawn independently for every sample and
applied with **the same parameters** to the image and its label. Labels are interpolated
linearly (bilinear in 2-D) so partial volume survives; in "hard" mode they are binarised at
0.5 *after* the interpolation, in "soft" mode never.

Implementation: one ``(N, 2, 3)`` matrix per sample, :func:`torch.nn.functional.affine_grid`
and :func:`~torch.nn.functional.grid_sample` on the whole batch at once, on whatever device
the batch lives (the training device: each batch is moved there first), so augmentation
costs a few percent of a training step. The matrix is built in pixel units and converted to the normalised
coordinates of ``affine_grid`` so that rotations stay rigid on non-square slices:

.. math::

    \\theta = D^{-1} \\, \\frac{1}{s} R(\\varphi) \\, D, \\qquad
    t = 2\\,(t_x, t_y), \\qquad D = \\mathrm{diag}(W/2, H/2)

where :math:`\\theta` maps *output* to *input* positions (hence the inverse scale ``1/s``:
``s > 1`` enlarges the content) and :math:`t_x, t_y \\in [-0.03, 0.03]` are fractions of the
width and height. Outside the slice the edge value is repeated (``padding_mode="border"``),
for images and labels alike, so a structure cut by the crop is not cut a second time.

Apple MPS lacks ``padding_mode="border"`` and bicubic sampling before torch 2.11
(:func:`native_grid_sample`). There, bilinear border sampling is computed exactly as
bilinear zero-padded sampling of the grid clamped to the outermost pixel centres (border
padding clamps the sample position, so both give the same weights), on the device; bicubic
(whose 4x4 taps are clamped one by one) falls back to the CPU for the warp only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from napari_softseg.engine.preprocess import binarise as hard_labels

__all__ = ["RandomAffine", "AffineParams", "IMAGE_MODES", "native_grid_sample", "border_grid_sample"]

#: interpolation of the image (labels are always bilinear)
IMAGE_MODES = ("bilinear", "bicubic")
#: first torch release whose MPS backend samples with border padding and bicubic
MPS_GRID_SAMPLE_TORCH = (2, 11)


def _torch_release() -> tuple[int, int]:
    major, minor = (torch.__version__.split("+")[0].split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def native_grid_sample(device_type: str, mode: str, release: tuple[int, int] | None = None) -> bool:
    """Whether ``grid_sample(mode=mode, padding_mode="border")`` runs natively on devices of
    ``device_type`` with torch ``release`` (default: the installed one)."""
    if device_type != "mps":
        return True
    return (release or _torch_release()) >= MPS_GRID_SAMPLE_TORCH


def border_grid_sample(x: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``F.grid_sample(x, grid, mode, padding_mode="border", align_corners=False)`` that also
    runs where border padding or bicubic are missing (see the module docstring)."""
    if native_grid_sample(x.device.type, mode):
        return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
    if mode == "bilinear":
        h, w = x.shape[-2:]
        limit = torch.tensor([1.0 - 1.0 / w, 1.0 - 1.0 / h], dtype=grid.dtype, device=grid.device)
        clamped = torch.maximum(torch.minimum(grid, limit), -limit)
        return F.grid_sample(x, clamped, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = F.grid_sample(x.cpu(), grid.cpu(), mode=mode, padding_mode="border", align_corners=False)
    return out.to(x.device)


@dataclass(frozen=True)
class AffineParams:
    """Per-sample parameters: ``angle`` (radians), ``scale`` (content magnification) and
    ``shift`` ((N, 2) fractions of width and height)."""

    angle: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor


@dataclass(frozen=True)
class RandomAffine:
    """Random rotation / translation / scaling of image and label batches.

    Parameters
    ----------
    rotation : float
        Maximum absolute angle in degrees (uniform in ``[-rotation, rotation]``).
    translation : float
        Maximum shift as a fraction of the image size along each axis.
    scale : float
        Maximum relative scaling (uniform factor in ``[1 - scale, 1 + scale]``).
    image_mode : ``"bilinear"`` or ``"bicubic"``
        Image interpolation; labels are always bilinear (linear).
    """

    rotation: float = 20.0
    translation: float = 0.03
    scale: float = 0.10
    image_mode: str = "bilinear"

    def __post_init__(self) -> None:
        if self.image_mode not in IMAGE_MODES:
            raise ValueError(f"image_mode must be one of {IMAGE_MODES}")
        if self.rotation < 0 or self.translation < 0 or not 0 <= self.scale < 1:
            raise ValueError("rotation and translation must be >= 0 and scale in [0, 1)")

    def sample(self, n: int, *, generator: torch.Generator | None = None, device="cpu") -> AffineParams:
        """Draw parameters for ``n`` samples (on ``device``; ``generator`` must live there)."""
        u = torch.rand((n, 4), generator=generator, device=device, dtype=torch.float32) * 2.0 - 1.0
        return AffineParams(
            angle=u[:, 0] * math.radians(self.rotation),
            scale=1.0 + u[:, 1] * self.scale,
            shift=u[:, 2:] * self.translation,
        )

    @staticmethod
    def theta(params: AffineParams, height: int, width: int) -> torch.Tensor:
        """``(N, 2, 3)`` matrices for :func:`affine_grid` (output -> input, normalised)."""
        cos, sin = torch.cos(params.angle), torch.sin(params.angle)
        inv = 1.0 / params.scale
        aspect = height / width  # D^-1 R D mixes x and y with these factors
        theta = torch.empty((params.angle.shape[0], 2, 3), dtype=torch.float32, device=params.angle.device)
        theta[:, 0, 0] = cos * inv
        theta[:, 0, 1] = -sin * inv * aspect
        theta[:, 1, 0] = sin * inv / aspect
        theta[:, 1, 1] = cos * inv
        theta[:, :, 2] = 2.0 * params.shift
        return theta

    def apply(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None,
        params: AffineParams,
        *,
        hard: bool = False,
        binarise=None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Warp ``images`` ``(N, C, H, W)`` and ``labels`` ``(N, K, H, W)`` with ``params``.

        ``hard`` binarises the warped labels with ``binarise(labels)`` (default
        :func:`napari_softseg.engine.preprocess.binarise`: ``>= 0.5`` per channel).
        """
        n, c, h, w = images.shape
        theta = self.theta(params, h, w).to(images.device)
        grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
        if labels is None:
            return border_grid_sample(images.float(), grid, self.image_mode), None
        if self.image_mode == "bilinear":
            both = border_grid_sample(torch.cat([images.float(), labels.float()], dim=1), grid)
            out_img, out_lab = both[:, :c], both[:, c:]
        else:
            out_img = border_grid_sample(images.float(), grid, self.image_mode)
            out_lab = border_grid_sample(labels.float(), grid)
        out_lab = out_lab.clamp_(0.0, 1.0)
        if hard:
            out_lab = (binarise or hard_labels)(out_lab)
        return out_img.contiguous(), out_lab.contiguous()

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        hard: bool = False,
        binarise=None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draw parameters for the batch and :meth:`apply` them."""
        params = self.sample(images.shape[0], generator=generator, device=images.device)
        return self.apply(images, labels, params, hard=hard, binarise=binarise)
