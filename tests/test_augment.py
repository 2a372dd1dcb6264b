"""Batched augmentation: per-sample randomness, exact flips, range and layout."""
import torch

from distributed.augment import augment, random_erase, to_input


def make_image():
    x = torch.zeros(28, 28, dtype=torch.uint8)
    x[4:20, 6:12] = 255  # an off-centre bar: rotation and flips both move it
    x[22:26, 3:25] = 128
    return x


def test_to_input_range_shape_layout():
    x = torch.tensor([[0, 255], [127, 128]], dtype=torch.uint8).repeat(14, 14).unsqueeze(0)
    out = to_input(x)
    assert out.shape == (1, 1, 28, 28) and out.dtype == torch.float32
    assert out.min().item() == -1.0 and out.max().item() == 1.0
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_samples_of_one_batch_get_different_transforms():
    torch.manual_seed(0)
    batch = make_image().expand(64, 28, 28).contiguous()  # 64 copies of the same image
    out = augment(batch, rotate_deg=10, flip_p=0.5)
    assert out.shape == (64, 1, 28, 28)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out.min() >= -1.0 and out.max() <= 1.0
    flat = out.reshape(64, -1)
    max_diff = (flat[:, None, :] - flat[None, :, :]).abs().amax(-1)
    off_diagonal = ~torch.eye(64, dtype=torch.bool)
    assert (max_diff[off_diagonal] > 1e-3).all()  # every pair of samples got a different transform


def test_flip_only_is_an_exact_mirror_and_identity_without_augmentation():
    img = make_image().unsqueeze(0)
    mirrored = augment(img, rotate_deg=0, flip_p=1.0)
    assert torch.allclose(mirrored, to_input(img.flip(-1)), atol=1e-5)
    same = augment(img, rotate_deg=0, flip_p=0.0)
    assert torch.allclose(same, to_input(img), atol=1e-5)


def test_flip_rate_and_rotation_bounds():
    torch.manual_seed(1)
    img = make_image().unsqueeze(0)
    n = 2000
    out = augment(img.expand(n, 28, 28).contiguous(), rotate_deg=0, flip_p=0.5)
    flipped = (out - to_input(img.flip(-1))).abs().flatten(1).max(1).values < 1e-5
    assert 0.45 < flipped.float().mean().item() < 0.55
    # a 10-degree rotation moves pixel mass but never beyond what a 10-degree rotation of the bar allows
    rot = augment(img.expand(200, 28, 28).contiguous(), rotate_deg=10, flip_p=0.0)
    assert (rot - to_input(img)).abs().max() > 0.1


def test_random_erase_probability_and_value():
    torch.manual_seed(2)
    x = torch.ones(400, 1, 28, 28)
    out = random_erase(x, p=0.5, generator=None)
    erased = (out == 0).flatten(1).any(1)
    assert 0.4 < erased.float().mean().item() < 0.6
    frac = (out == 0).flatten(1).float().mean(1)[erased]
    assert frac.min() > 0 and frac.max() <= 0.25  # area in [2%, 20%] of the image (+ rounding)
    assert torch.equal(random_erase(x, p=0.0, generator=None), x)
