"""Batched kornia augmentations: exact crop/flip oracle, range, determinism under a generator."""
import pytest
import torch
import torch.nn.functional as F

from abstain.data.augment import AUGMENTS, build
from abstain.errors import ConfigError, InputError


def _candidates(img, pad):
    """Every crop of the zero-padded image at an integer offset, and its mirror image."""
    c, h, w = img.shape
    padded = F.pad(img, (pad, pad, pad, pad))
    out = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            out += [crop, crop.flip(-1)]
    return torch.stack(out)


@pytest.mark.parametrize("shape,pad", [((3, 16, 16), 2), ((1, 8, 8), 1), ((3, 32, 32), 4)])
def test_standard_is_exactly_a_padded_crop_or_its_flip(shape, pad):
    x = torch.rand(16, *shape, generator=torch.Generator().manual_seed(0))
    y = build("standard", shape)(x, torch.Generator().manual_seed(1))
    flips = 0
    for xi, yi in zip(x, y):
        cands = _candidates(xi, pad)
        err = (cands - yi).abs().flatten(1).amax(1)
        assert err.min() < 1e-6, "output is not an integer-offset crop (or mirror) of the padded input"
        flips += int(err.argmin()) % 2
    assert y.shape == x.shape
    assert 0 < flips < len(x)  # flip with probability 1/2


def test_generator_determinism_and_global_rng_untouched():
    x = torch.rand(8, 3, 32, 32)
    for name in ("standard", "autoaugment"):
        aug = build(name, (3, 32, 32))
        state = torch.get_rng_state()
        a = aug(x, torch.Generator().manual_seed(5))
        b = aug(x, torch.Generator().manual_seed(5))
        c = aug(x, torch.Generator().manual_seed(6))
        assert torch.equal(torch.get_rng_state(), state)
        assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name,shape", [("autoaugment", (3, 32, 32)), ("mtsd", (3, 24, 24)),
                                        ("standard", (1, 8, 8)), ("none", (2,))])
def test_range_shape_and_change(name, shape):
    x = torch.rand(16, *shape, generator=torch.Generator().manual_seed(3))
    y = build(name, shape)(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1 and torch.isfinite(y).all()
    assert torch.equal(y, x) == (name == "none")


def test_autoaugment_draws_a_subpolicy_per_image():
    """A constant grey batch: AA's colour operations change it differently per image only if
    sub-policies are drawn per image (per batch, all images would get the same operation
    types, and a grey image has no structure for the crop to reveal)."""
    from abstain.data.augment import _PerImagePolicy

    x = torch.full((64, 3, 8, 8), 0.3)
    torch.manual_seed(0)
    y = _PerImagePolicy("cifar10")(x)
    per_image_mean = y.mean(dim=(1, 2, 3))
    assert len(torch.unique(per_image_mean.round(decimals=3))) >= 5


def test_mtsd_has_no_flip():
    """Rotation/translation/jitter keep a strong left-right asymmetry; a flip would invert it."""
    x = torch.zeros(64, 3, 32, 32)
    x[:, :, 8:24, 2:12] = 0.9  # bright bar on the left
    y = build("mtsd", (3, 32, 32))(x, torch.Generator().manual_seed(0))
    left, right = y[..., :16].mean(dim=(1, 2, 3)), y[..., 16:].mean(dim=(1, 2, 3))
    assert (left > right).all()


def test_errors():
    with pytest.raises(ConfigError, match="unknown augmentation 'mixup'"):
        build("mixup", (3, 32, 32))
    with pytest.raises(ConfigError, match="needs images"):
        build("standard", (2,))
    with pytest.raises(ConfigError, match="needs RGB"):
        build("autoaugment", (1, 8, 8))
    with pytest.raises(InputError, match=r"built for inputs \(3, 32, 32\)"):
        build("standard", (3, 32, 32))(torch.rand(2, 3, 16, 16))
    assert set(AUGMENTS) == {"none", "standard", "autoaugment", "mtsd"}
