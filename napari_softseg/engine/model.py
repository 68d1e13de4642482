"""The SoftSeg network: a 2-D U-Net with a choice of final activation.

Architecture (Ronneberger et al. 2015, as used by Gros, Lemay & Cohen-Adad 2021 through
ivadomed):

* ``depth`` down-sampling steps (2x2 max pooling). Level ``l`` (0-based) of the encoder has
  ``base_features * 2**l`` feature maps; the bottleneck has ``base_features * 2**depth``.
* Every block is two 3x3 convolutions (padding 1), each followed by batch norm, ReLU and
  dropout (``p = dropout``, 0.3 in the paper; channel-wise ``Dropout2d`` as in ivadomed).
  The trainer builds NormReLU networks without dropout
  (:attr:`~napari_softseg.engine.presets.Preset.dropout`): with it they collapsed to an
  all-zero output; a network without dropout gives no Monte-Carlo dropout samples.
* The decoder up-samples bilinearly (x2), concatenates the skip connection and applies a
  block; a final 1x1 convolution gives ``out_channels`` raw scores (logits).
* Input height and width must be divisible by ``2**depth`` (8 for the default depth 3);
  :func:`napari_softseg.engine.predict.predict_volume` pads slices accordingly.

Default size: ``depth=3, base_features=16`` has 0.49 M parameters (a 1.9 MB checkpoint), small
enough to ship; ``depth=4`` (the paper's setting for larger structures) has 1.96 M.

Output channels
---------------
Binary presets (``sigmoid``/``normrelu``) use one output channel per structure. Multi-class
presets (``softmax``/``multiclass_normrelu``) use ``1 + K`` channels where **channel 0 is the
background**, so that the activation can make the classes sum to one.

:meth:`UNet.forward` returns the **activated** output (SoftSeg applies its losses to the
activated prediction); :meth:`UNet.forward_logits` returns the raw scores.
"""

from __future__ import annotations

import copy
import functools
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from napari_softseg.errors import UserError

__all__ = [
    "ACTIVATIONS",
    "is_multiclass",
    "InferenceUNet",
    "MultiClassNormReLU",
    "NORM_SCOPES",
    "NormReLU",
    "Softmax",
    "UNet",
    "enable_mc_dropout",
    "count_flops",
]


#: where :class:`NormReLU` takes the maximum it divides by (see there)
NORM_SCOPES = ("slice", "batch")


class NormReLU(nn.Module):
    r"""Normalised ReLU, SoftSeg's final activation: :math:`p = \mathrm{ReLU}(x) / m`.

    Gros, Lemay & Cohen-Adad, "SoftSeg: Advantages of soft versus binary training for image
    segmentation", Medical Image Analysis 71 (2021), section 2.2. ``scope`` says where the
    maximum :math:`m` is taken (per channel):

    ``"batch"`` (new networks; the paper and ivadomed)
        **Training**: :math:`m` is the maximum of :math:`\mathrm{ReLU}(x)` over the whole
        batch. Batches always hold a slice with the structure
        (:class:`~napari_softseg.engine.training.sampler.StructureBatchSampler`), so a slice
        without it is measured against a structure voxel of its batch and every gradient on
        it pushes its scores down. **Inference** (eval mode): :math:`p = \min(\mathrm{ReLU}(x)
        / m, 1)` with a **stored normaliser** :math:`m` = :attr:`norm_max` (a buffer saved
        with the weights, like batch-norm statistics, fitted after training by
        :func:`~napari_softseg.engine.training.normaliser.fit_by_loss`). The output depends
        neither on the batch size nor on which slices are present, a scan without the
        structure comes out near zero, and every Monte-Carlo dropout or test-time
        augmentation sample is divided by the same :math:`m`. Measured (lesion phantom
        cohort): slices without lesions reaching p >= 0.5 went from 23 of 26 (``"slice"``) to
        0, a lesion-free scan's largest p is 0.02, and batch sizes 1 and 16 differ by 1e-7.
    ``"slice"`` (every checkpoint written before the scope existed)
        :math:`m` is the maximum of each sample and channel, in training and at inference.
        The output reaches 1 in every slice with a positive score, so in a slice without the
        structure its largest score becomes p = 1 and, at that voxel, the only gradient grows
        it: these networks put false p = 1 spots into structure-free slices. Kept so that
        older checkpoints predict exactly as before.

    Where the maximum is 0 (no positive score) the output is 0. A ``"batch"`` module also
    keeps :attr:`running_max`, the running mean (momentum 0.1) of its training batch maxima:
    not saved, it floors the scale of
    :class:`~napari_softseg.engine.losses.ScoreMargin` and is the normaliser of last resort
    while training. In eval mode a ``"batch"`` module without a positive :attr:`norm_max`
    raises ``RuntimeError`` (it has no defined output).
    """

    multiclass: ClassVar[bool] = False

    def __init__(self, scope: str = "slice", channels: int = 1, momentum: float = 0.1) -> None:
        super().__init__()
        if scope not in NORM_SCOPES:
            raise ValueError(f"NormReLU scope must be one of {NORM_SCOPES}, got {scope!r}")
        self.scope, self.momentum = scope, float(momentum)
        if scope == "batch":  # "slice" modules keep the state dict of the older checkpoints (no buffer)
            self.register_buffer("norm_max", torch.zeros(int(channels)))  # 0: not estimated yet
            self.register_buffer("running_max", torch.zeros(int(channels)), persistent=False)

    def extra_repr(self) -> str:
        return f"scope={self.scope!r}"

    @property
    def calibrated(self) -> bool:
        """A ``"batch"`` module with a finite positive stored normaliser for every channel."""
        m = getattr(self, "norm_max", None)
        return m is not None and bool(torch.isfinite(m).all()) and bool((m > 0).all())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x.float())
        tiny = torch.finfo(x.dtype).tiny
        if self.scope == "slice":
            peak = x.flatten(2).amax(dim=2)[(...,) + (None,) * (x.ndim - 2)]
            return torch.where(peak > 0, x / peak.clamp_min(tiny), torch.zeros_like(x))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        if self.training:
            peak = x.transpose(0, 1).flatten(1).amax(dim=1)
            self._track(peak.detach())
            peak = peak.view(shape)
            return torch.where(peak > 0, x / peak.clamp_min(tiny), torch.zeros_like(x))
        if not self.calibrated:
            raise RuntimeError("NormReLU(scope='batch') has no stored normaliser yet (norm_max); "
                               "the trainer sets it, see napari_softseg.engine.training.normaliser.")
        return torch.clamp(x / self.norm_max.to(x).view(shape), max=1.0)

    @torch.no_grad()
    def _track(self, peak: torch.Tensor) -> None:
        old, new = self.running_max, peak.to(self.running_max)
        self.running_max.copy_(torch.where(old > 0, (1 - self.momentum) * old + self.momentum * new, new))


class MultiClassNormReLU(nn.Module):
    r"""Multi-class normalised ReLU: ReLU per class divided by the sum over all classes.

    .. math:: y_{n,k} = \frac{\mathrm{ReLU}(x_{n,k})}{\sum_{j=0}^{K} \mathrm{ReLU}(x_{n,j})}

    over the channel axis (dim 1), **including the background channel 0**, so the classes of a
    voxel sum to 1; a voxel whose scores are all <= 0 gets 0 in every class. Purely voxel-wise,
    hence independent of the other samples in a batch.

    Source: Lemay et al., "Label fusion and training methods for reliable representation of
    inter-rater uncertainty", MELBA 2022 (generalisation of SoftSeg's NormReLU).
    """

    multiclass: ClassVar[bool] = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x.float())
        total = x.sum(dim=1, keepdim=True)
        return torch.where(total > 0, x / total.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))


class Softmax(nn.Module):
    """Softmax over the class axis (dim 1), computed in float32."""

    multiclass: ClassVar[bool] = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x.float(), dim=1)


class _Sigmoid(nn.Sigmoid):
    """Logistic sigmoid computed in float32."""

    multiclass: ClassVar[bool] = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x.float())


#: name -> final activation class (instantiated without arguments); each class says whether
#: it is multi-class (``multiclass``: a background channel 0, classes summing to one).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "normrelu": NormReLU,
    "sigmoid": _Sigmoid,
    "softmax": Softmax,
    "multiclass_normrelu": MultiClassNormReLU,
}


def is_multiclass(activation: str) -> bool:
    """Whether the activation named ``activation`` is multi-class: its network has a
    background channel 0 before the ``K`` classes, and a voxel's classes sum to one. The
    one rule behind :attr:`UNet.multiclass` and :attr:`~napari_softseg.engine.presets.Preset.multiclass`."""
    return bool(ACTIVATIONS[activation].multiclass)


def _block(in_ch: int, out_ch: int, dropout: float) -> nn.Sequential:
    """Two (3x3 conv, padding 1) -> batch norm -> ReLU -> channel dropout."""
    layers: list[nn.Module] = []
    for c_in in (in_ch, out_ch):
        layers += [
            nn.Conv2d(c_in, out_ch, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        ]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """2-D U-Net (see the module docstring for the layout).

    Parameters
    ----------
    in_channels : int
        Number of input contrasts.
    out_channels : int
        Output channels (1 for a binary structure; ``1 + K`` with background first for the
        multi-class activations).
    depth : int
        Number of 2x2 poolings; inputs need H and W divisible by ``2**depth``.
    base_features : int
        Feature maps of the first level (doubled at each level).
    dropout : float
        Dropout probability after every convolution (0.3 in SoftSeg; the trainer gives
        ``"normrelu"`` networks 0, see :attr:`~napari_softseg.engine.presets.Preset.dropout`).
    activation : str
        Key of :data:`ACTIVATIONS`.
    norm_scope : str
        ``"normrelu"`` only: where :class:`NormReLU` takes its maximum (:data:`NORM_SCOPES`;
        ``"slice"``, the default, is what every checkpoint without the setting was trained with).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 3,
        base_features: int = 16,
        dropout: float = 0.3,
        activation: str = "normrelu",
        norm_scope: str = "slice",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise UserError(
                f"Unknown activation {activation!r}; choose one of {', '.join(sorted(ACTIVATIONS))}."
            )
        if depth < 1 or base_features < 1 or in_channels < 1 or out_channels < 1:
            raise UserError("U-Net depth, base_features, in_channels and out_channels must all be at least 1.")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"U-Net dropout must lie in [0, 1), got {dropout}.")
        if norm_scope not in NORM_SCOPES or (norm_scope != "slice" and activation != "normrelu"):
            raise UserError(f"NormReLU's normalisation scope must be one of {', '.join(NORM_SCOPES)} "
                            f"(and only the normrelu activation has one), got {norm_scope!r} with {activation}.")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.depth = int(depth)
        self.base_features = int(base_features)
        self.dropout = float(dropout)
        self.activation_name = activation
        self.norm_scope = norm_scope

        widths = [self.base_features * 2**level for level in range(self.depth + 1)]
        self.encoders = nn.ModuleList()
        c_in = self.in_channels
        for w in widths[:-1]:
            self.encoders.append(_block(c_in, w, self.dropout))
            c_in = w
        self.bottleneck = _block(widths[-2], widths[-1], self.dropout)
        self.decoders = nn.ModuleList()
        for level in reversed(range(self.depth)):
            self.decoders.append(_block(widths[level + 1] + widths[level], widths[level], self.dropout))
        self.head = nn.Conv2d(widths[0], self.out_channels, kernel_size=1)
        if activation == "normrelu":
            self.activation = NormReLU(norm_scope, self.out_channels)
        else:
            self.activation = ACTIVATIONS[activation]()

    @property
    def multiple(self) -> int:
        """H and W of the input must be multiples of this number."""
        return 2**self.depth

    @property
    def has_dropout(self) -> bool:
        """Dropout is on in training: Monte-Carlo dropout can draw different samples."""
        return self.dropout > 0

    @property
    def multiclass(self) -> bool:
        """Multi-class network (background channel 0), see :func:`is_multiclass`."""
        return is_multiclass(self.activation_name)

    @property
    def n_structures(self) -> int:
        """Foreground outputs: ``out_channels`` without the background channel of a
        multi-class network."""
        return self.out_channels - 1 if self.multiclass else self.out_channels

    def config(self) -> dict:
        """Constructor arguments as a JSON-serialisable dict (``UNet(**model.config())``)."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "depth": self.depth,
            "base_features": self.base_features,
            "dropout": self.dropout,
            "activation": self.activation_name,
        } | ({"norm_scope": self.norm_scope} if self.activation_name == "normrelu" else {})

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw scores ``(N, out_channels, H, W)`` for input ``(N, in_channels, H, W)``."""
        m = self.multiple
        if x.ndim != 4 or x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"UNet expects (N, C, H, W) with H and W divisible by {m}, got {tuple(x.shape)}.")
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for dec, skip in zip(self.decoders, reversed(skips)):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = dec(torch.cat([x, skip], dim=1))
        return self.head(x)

    def forward(self, x: torch.Tensor, with_logits: bool = False):
        """Activated output (float32), e.g. NormReLU of the logits; with ``with_logits`` the
        pair ``(output, logits)`` (for :class:`~napari_softseg.engine.losses.ScoreMargin`,
        which acts on the logits)."""
        logits = self.forward_logits(x)
        out = self.activation(logits)
        return (out, logits) if with_logits else out


def enable_mc_dropout(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode except its dropout layers (Monte-Carlo dropout).

    Batch norm keeps its running statistics; only dropout samples new masks per call.
    Returns the model.
    """
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.train()
    return model


def count_flops(model: UNet, height: int, width: int) -> int:
    """Multiply-add FLOPs (2 per MAC) of the convolutions for one ``height x width`` slice.

    Convolutions dominate; batch norm, ReLU, pooling and up-sampling (a few FLOPs per
    element) are left out, which makes achieved-GFLOP/s figures slightly conservative.
    """
    total = 0
    h, w = height, width
    for enc in model.encoders:
        total += _block_flops(enc, h, w)
        h, w = h // 2, w // 2
    total += _block_flops(model.bottleneck, h, w)
    for dec in model.decoders:
        h, w = h * 2, w * 2
        total += _block_flops(dec, h, w)
    total += 2 * model.head.in_channels * model.head.out_channels * h * w
    return int(total)


def _block_flops(block: nn.Sequential, h: int, w: int) -> int:
    flops = 0
    for layer in block:
        if isinstance(layer, nn.Conv2d):
            k = layer.kernel_size[0] * layer.kernel_size[1]
            flops += 2 * layer.in_channels * layer.out_channels * k * h * w
    return flops


@functools.lru_cache(maxsize=1)
def _fused_conv_relu_op():
    """oneDNN's fused convolution + ReLU (what torch.compile emits on CPU), or None."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    op = getattr(mkldnn, "_convolution_pointwise", None) if mkldnn is not None else None
    if op is None or not torch.backends.mkldnn.is_available():
        return None
    try:
        x = torch.ones(1, 1, 4, 4).contiguous(memory_format=torch.channels_last)
        y = op(x, torch.ones(2, 1, 3, 3), torch.full((2,), -1.0), [1, 1], [1, 1], [1, 1], 1, "relu", [], "")
        expected = F.relu(F.conv2d(x, torch.ones(2, 1, 3, 3), torch.full((2,), -1.0), padding=1))
        return op if torch.allclose(y, expected) else None
    except Exception:  # pragma: no cover - depends on the torch build
        return None


class InferenceUNet(nn.Module):
    """An inference-only copy of a :class:`UNet` that computes the same function faster.

    * batch norm (running statistics) is folded into the preceding convolution:
      ``W' = W * g / sqrt(v + eps)``, ``b' = beta - m * g / sqrt(v + eps)``;
    * dropout is removed, or kept active with ``mc_dropout=True`` (Monte-Carlo dropout);
    * weights are stored once in ``dtype`` (bfloat16/float16 for mixed precision) and
      activations kept channels-last; the first convolution reads the float32 input with
      float32 weights (rounding the normalised image to bf16 was the largest error source,
      0.021 vs 0.005 max abs on a trained brain model, for 0.4 % of the FLOPs);
    * on the CPU each convolution and its ReLU run as one fused oneDNN primitive.

    The 1x1 head and the final activation run in float32. :meth:`forward_logits` takes
    ``(N, C, H, W)`` (H, W multiples of ``2**depth``) and returns float32 logits.
    """

    def __init__(
        self,
        model: UNet,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        mc_dropout: bool = False,
    ) -> None:
        super().__init__()
        device = torch.device(device)
        self.depth = model.depth
        self.dtype = dtype
        self.dropout = model.dropout if mc_dropout else 0.0
        # a copy in eval mode: a "batch" NormReLU divides by its stored normaliser, the same
        # for every batch, Monte-Carlo dropout draw and test-time augmentation view
        self.activation = copy.deepcopy(model.activation).to(device).eval()
        self._fused = _fused_conv_relu_op() if device.type == "cpu" else None
        with torch.no_grad():
            self.encoders = [self._fold(block, device) for block in model.encoders]
            self.first = self._fold(model.encoders[0], device, torch.float32)[:1]
            self.encoders[0] = self.encoders[0][1:]
            self.bottleneck = self._fold(model.bottleneck, device)
            self.decoders = [self._fold(block, device) for block in model.decoders]
            self.head_w = model.head.weight.detach().to(device, torch.float32).clone()
            self.head_b = model.head.bias.detach().to(device, torch.float32).clone()

    @property
    def multiple(self) -> int:
        return 2**self.depth

    def _fold(self, block: nn.Sequential, device: torch.device, dtype: torch.dtype | None = None) -> list:
        dtype = dtype or self.dtype
        layers = list(block)
        pairs = []
        for conv, bn in zip(layers[0::4], layers[1::4]):
            assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            weight = conv.weight * scale[:, None, None, None]
            weight = weight.to(device, dtype).contiguous(memory_format=torch.channels_last)
            pairs.append((weight, bias.to(device, dtype)))
        return pairs

    def _block(self, x: torch.Tensor, pairs) -> torch.Tensor:
        for weight, bias in pairs:
            if self._fused is not None:
                x = self._fused(x, weight, bias, [1, 1], [1, 1], [1, 1], 1, "relu", [], "")
            else:
                x = F.relu_(F.conv2d(x, weight, bias, padding=1))
            if self.dropout:
                x = F.dropout2d(x, self.dropout, training=True)
        return x

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self._block(x.float().contiguous(memory_format=torch.channels_last), self.first)
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        skips = []
        for pairs in self.encoders:
            x = self._block(x, pairs)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self._block(x, self.bottleneck)
        for pairs, skip in zip(self.decoders, reversed(skips)):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = self._block(torch.cat([x, skip], dim=1), pairs)
        return F.conv2d(x.float(), self.head_w, self.head_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.forward_logits(x))
