"""U-Net layout and the final activations."""

import pytest
import torch
from torch import nn

from napari_softseg.errors import UserError
from napari_softseg.engine.model import (
    ACTIVATIONS,
    MultiClassNormReLU,
    NormReLU,
    Softmax,
    UNet,
    count_flops,
    enable_mc_dropout,
)
from napari_softseg.engine.presets import DEFAULT_PRESET, PRESETS, Preset, get_preset


def test_normrelu_values_and_zero_output():
    x = torch.tensor([[[[-1.0, 0.5], [2.0, 1.0]]], [[[-3.0, -1.0], [0.0, -2.0]]]])
    y = NormReLU()(x)
    assert torch.equal(y[0], torch.tensor([[[0.0, 0.25], [1.0, 0.5]]]))
    assert torch.equal(y[1], torch.zeros(1, 2, 2))  # no positive score -> all zero, no NaN


def test_normrelu_per_sample_independence():
    torch.manual_seed(0)
    a = torch.randn(1, 1, 8, 8)
    b = 50 * torch.randn(3, 1, 8, 8)  # batch-mates with a much larger maximum
    alone = NormReLU()(a)
    batched = NormReLU()(torch.cat([b[:1], a, b[1:]]))[1:2]
    assert torch.equal(alone, batched)
    assert alone.max().item() == 1.0


def test_unet_slice_independent_of_batch_in_eval():
    torch.manual_seed(0)
    model = UNet(depth=2, base_features=4).eval()
    a = torch.randn(1, 1, 16, 16)
    others = 10 * torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        alone = model(a)
        batched = model(torch.cat([others[:1], a, others[1:]]))[1:2]
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-5)


def test_multiclass_normrelu_rows_sum_to_one():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 5)
    x[:, 1] = x[:, 1].abs() + 0.1  # at least one positive class per voxel ...
    x[0, :, 0, 0] = -1.0  # ... except here  # all classes negative at one voxel
    y = MultiClassNormReLU()(x)
    sums = y.sum(dim=1)
    assert torch.all(y >= 0)
    assert sums[0, 0, 0].item() == 0.0
    mask = torch.ones_like(sums, dtype=torch.bool)
    mask[0, 0, 0] = False
    torch.testing.assert_close(sums[mask], torch.ones(int(mask.sum())))
    # by hand: scores (1, 3, -2, 0) -> (0.25, 0.75, 0, 0)
    v = MultiClassNormReLU()(torch.tensor([1.0, 3.0, -2.0, 0.0]).reshape(1, 4, 1, 1)).flatten()
    assert torch.equal(v, torch.tensor([0.25, 0.75, 0.0, 0.0]))
    s = Softmax()(x)
    torch.testing.assert_close(s.sum(dim=1), torch.ones(2, 5, 5))


def test_unet_layout_shapes_and_config():
    model = UNet(in_channels=2, out_channels=3, depth=3, base_features=8, activation="softmax")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs[:-1])
    assert convs[-1].kernel_size == (1, 1)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == len(convs) - 1
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout2d)]
    assert len(drops) == len(convs) - 1 and all(d.p == 0.3 for d in drops)
    x = torch.randn(2, 2, 24, 40)
    y = model.eval()(x)
    assert y.shape == (2, 3, 24, 40) and y.dtype == torch.float32
    assert UNet(**model.config()).config() == model.config()
    with pytest.raises(ValueError):
        model(torch.randn(1, 2, 20, 40))  # 20 is not a multiple of 8
    with pytest.raises(UserError):
        UNet(activation="tanh")


def test_default_size_and_flops():
    model = UNet()
    n = sum(p.numel() for p in model.parameters())
    assert n * 4 < 5e6  # ships in under 5 MB
    # first conv of a 1-channel 16-feature net on 8x8: 2*1*16*9*64 FLOPs
    tiny = UNet(depth=1, base_features=2)
    # enc 1->2, 2->2 at 8x8 ; bottleneck 2->4, 4->4 at 4x4 ; dec 6->2, 2->2 at 8x8 ; head 2->1
    expected = 2 * 9 * (64 * (1 * 2 + 2 * 2) + 16 * (2 * 4 + 4 * 4) + 64 * (6 * 2 + 2 * 2)) + 2 * 2 * 64
    assert count_flops(tiny, 8, 8) == expected


def test_mc_dropout_mode():
    model = enable_mc_dropout(UNet(depth=1, base_features=4))
    assert all(m.training for m in model.modules() if isinstance(m, nn.Dropout2d))
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


def test_presets():
    assert DEFAULT_PRESET == "softseg"
    assert set(PRESETS) == {
        "softseg", "conventional", "hard-relu-wing", "soft-relu-dice", "soft-sig-wing",
        "multiclass-softmax-dice", "multiclass-softseg",
    }
    soft = get_preset("softseg")
    assert (soft.title, soft.label_mode, soft.activation, soft.loss) == ("Soft-ReLU-Wing", "soft", "normrelu", "adaptive_wing")
    conv = PRESETS["conventional"]
    assert (conv.label_mode, conv.activation, conv.loss) == ("hard", "sigmoid", "dice")
    assert isinstance(soft.make_activation(), NormReLU)
    assert soft.make_loss().omega == 8.0
    assert PRESETS["multiclass-softseg"].out_channels(2) == 3 and soft.out_channels(1) == 1
    for preset in PRESETS.values():
        assert isinstance(preset.make_activation(), ACTIVATIONS[preset.activation])
    with pytest.raises(UserError, match="softseg"):
        get_preset("softseg2")
    with pytest.raises(Exception):
        soft.name = "x"  # frozen
    assert isinstance(get_preset(soft), Preset)
