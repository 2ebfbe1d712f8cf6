"""Guided filter: the torch version against an independent NumPy implementation of He et al.,
Algorithm 1, and the numpy/OpenCV inference version (`refine_alpha`) against the torch one."""

import cv2
import numpy as np
import pytest
import torch

from personseg.guided_filter import area_downsample, default_radius, refine_alpha
from personseg.guided_filter_torch import (
    GuidedFilterRefiner,
    box_filter,
    fast_guided_filter,
    guided_filter,
    refine_alpha_torch,
)

SIZES = [(13, 17), (3, 5)]  # (3, 5) is smaller than the window for r = 2 and 4


def np_box(x: np.ndarray, r: int) -> np.ndarray:
    """Clipped-window mean of (H, W) by a direct double loop."""
    H, W = x.shape
    out = np.empty_like(x)
    for i in range(H):
        for j in range(W):
            out[i, j] = x[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].mean()
    return out


def np_guided_filter(I: np.ndarray, p: np.ndarray, r: int, eps: float) -> np.ndarray:
    """Algorithm 1 of He et al.; I (H, W, C) with C in {1, 3}, p (H, W); 3x3 systems by np.linalg.solve."""
    H, W, C = I.shape
    mean_I = np.stack([np_box(I[..., c], r) for c in range(C)], -1)
    mean_p = np_box(p, r)
    cov_Ip = np.stack([np_box(I[..., c] * p, r) for c in range(C)], -1) - mean_I * mean_p[..., None]
    sigma = np.empty((H, W, C, C))
    for c in range(C):
        for d in range(C):
            sigma[..., c, d] = np_box(I[..., c] * I[..., d], r) - mean_I[..., c] * mean_I[..., d]
    a = np.empty((H, W, C))
    for i in range(H):
        for j in range(W):
            a[i, j] = np.linalg.solve(sigma[i, j] + eps * np.eye(C), cov_Ip[i, j])
    b = mean_p - (a * mean_I).sum(-1)
    mean_a = np.stack([np_box(a[..., c], r) for c in range(C)], -1)
    return (mean_a * I).sum(-1) + np_box(b, r)


def to_t(x: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    """(H, W) or (H, W, C) -> (1, C, H, W)."""
    x = x[..., None] if x.ndim == 2 else x
    return torch.from_numpy(x).permute(2, 0, 1)[None].to(dtype)


@pytest.mark.parametrize("r", [1, 2, 4])
@pytest.mark.parametrize("size", SIZES)
def test_box_filter_matches_clipped_window_mean(size, r):
    x = np.random.default_rng(r).random(size)
    np.testing.assert_allclose(box_filter(to_t(x), r)[0, 0].numpy(), np_box(x, r), atol=1e-4)


@pytest.mark.parametrize("r", [1, 3])
def test_box_filter_interior_matches_opencv(r):
    x = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    ref = cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)
    out = box_filter(to_t(x), r)[0, 0].numpy()
    np.testing.assert_allclose(out[r:-r, r:-r], ref[r:-r, r:-r], atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("r", [1, 2, 4])
@pytest.mark.parametrize("size", SIZES)
def test_guided_filter_matches_numpy(size, r, channels):
    rng = np.random.default_rng(10 * r + channels)
    I, p, eps = rng.random((*size, channels)), rng.random(size), 1e-2
    out = guided_filter(to_t(I), to_t(p), r, eps)
    assert out.shape == (1, 1, *size)
    np.testing.assert_allclose(out[0, 0].numpy(), np_guided_filter(I, p, r, eps), atol=1e-4)


@pytest.mark.parametrize("eps", [1e-4, 1e-5])
def test_color_guided_filter_float32_on_gray_guide(eps):
    """A near-gray RGB guide makes Sigma near rank 1; float32 must stay finite and close to float64."""
    gen = torch.Generator().manual_seed(0)
    gray = torch.rand(1, 1, 40, 50, generator=gen).repeat(1, 3, 1, 1)
    guide = gray + 1e-3 * torch.rand(1, 3, 40, 50, generator=gen)
    src = (torch.rand(1, 1, 40, 50, generator=gen) > 0.5).float()
    out = guided_filter(guide, src, 2, eps)
    assert torch.isfinite(out).all()
    ref = guided_filter(guide.double(), src.double(), 2, eps)
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_guided_filter_gradcheck(channels):
    gen = torch.Generator().manual_seed(0)
    guide = torch.rand(1, channels, 5, 6, generator=gen, dtype=torch.float64)
    src = torch.rand(1, 1, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    eps = torch.tensor(1e-2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, e: guided_filter(guide, s, 1, e), (src, eps))
    lr = torch.rand(1, 1, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, e: fast_guided_filter(guide, s, 1, e), (lr, eps))


def test_refiner_gradients():
    refiner = GuidedFilterRefiner(r=1, eps=1e-2)
    guide = torch.rand(2, 3, 16, 20)
    logits = torch.randn(2, 1, 8, 10, requires_grad=True)
    prob = refiner(guide, logits)
    assert prob.shape == (2, 1, 16, 20) and 0 <= prob.min() and prob.max() <= 1
    (prob * torch.rand_like(prob)).sum().backward()
    for grad in (logits.grad, refiner.log_eps.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("channels", [1, 3])
def test_fast_guided_filter_at_full_size_is_guided_filter(channels):
    guide, src = torch.rand(2, channels, 24, 31), torch.rand(2, 1, 24, 31)
    torch.testing.assert_close(fast_guided_filter(guide, src, 2, 1e-3), guided_filter(guide, src, 2, 1e-3),
                               atol=1e-5, rtol=0)


def test_refine_alpha_contract():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 161, 3), dtype=np.uint8)
    out = refine_alpha(image, rng.random((30, 54), dtype=np.float32))
    assert out.shape == (90, 161) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    const = refine_alpha(image, np.full((30, 54), 0.7, np.float32))
    np.testing.assert_allclose(const, 0.7, atol=1e-5)


def test_refine_alpha_snaps_to_image_edge():
    """A blurry low-res step becomes sharp along the guide's edge, sharper than bilinear upsampling."""
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 27:] = 200  # the edge is not on the low-res grid (factor 4)
    alpha_lr = cv2.resize((image[..., 0] > 0).astype(np.float32), (16, 16), interpolation=cv2.INTER_AREA)
    bilinear = cv2.resize(alpha_lr, (64, 64), interpolation=cv2.INTER_LINEAR)
    target = (image[..., 0] > 0).astype(np.float32)
    refined = refine_alpha(image, alpha_lr, r=1, eps=1e-4)
    assert np.abs(refined - target).mean() < 0.5 * np.abs(bilinear - target).mean()


def soft_blobs(rng, h: int, w: int) -> np.ndarray:
    """A low-resolution probability like a model's: blobs with soft edges."""
    noise = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2)
    return cv2.GaussianBlur((noise > noise.mean()).astype(np.float32), (0, 0), 1)


@pytest.mark.parametrize("size,low", [((800, 600), (277, 208)), ((1080, 1920), (180, 320)), ((91, 161), (30, 54)),
                                      ((37, 41), (20, 13)), ((64, 64), (64, 64))])
@pytest.mark.parametrize("r", [None, 2])
def test_numpy_refine_alpha_matches_torch_on_random_images(size, low, r):
    rng = np.random.default_rng(sum(size))
    image = cv2.GaussianBlur(rng.integers(0, 256, (*size, 3), dtype=np.uint8), (0, 0), 2)
    alpha = soft_blobs(rng, *low)
    radius = default_radius(*low) if r is None else r
    out = refine_alpha(image, alpha, r)
    assert out.shape == size and out.dtype == np.float32
    np.testing.assert_allclose(out, refine_alpha_torch(image, alpha, radius), atol=1e-3, rtol=0)


def test_numpy_refine_alpha_matches_torch_on_real_photos(data_dir):
    from personseg.imageio import list_inputs, read_image
    from personseg.metrics import BinaryMetrics

    rng = np.random.default_rng(0)
    photos = [p for f in ("portraits", "hsd", "coco") for p in list_inputs([str(data_dir / f / "images")])[:3]]
    for path in photos:
        image = read_image(path)
        scale = (320 * 180 / (image.shape[0] * image.shape[1])) ** 0.5
        low = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
        alpha = soft_blobs(rng, *low)
        r = default_radius(*low)
        ours = refine_alpha(image, alpha)
        # the torch filter computed exactly (float64): its float32 run is itself up to ~3e-3 off it on a
        # few pixels of real photos (eps 1e-5 amplifies rounding in flat areas), ours within 1e-3
        exact = refine_alpha_torch(image, alpha, r, dtype=torch.float64)
        np.testing.assert_allclose(ours, exact, atol=1e-3, rtol=0, err_msg=str(path))
        for ref in (exact, refine_alpha_torch(image, alpha, r)):  # the same masks as either torch run
            metrics = BinaryMetrics(0.5)
            metrics.update(torch.from_numpy(ours)[None], torch.from_numpy(ref >= 0.5)[None].float())
            scores = metrics.compute()
            assert scores["iou"] > 0.999 and scores["boundary_f"] > 0.99, (path, scores)


def test_area_downsample_is_torch_area_interpolation():
    import torch.nn.functional as F

    image = np.random.default_rng(0).integers(0, 256, (97, 131, 3), dtype=np.uint8)
    ref = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, size=(30, 41), mode="area")
    np.testing.assert_allclose(area_downsample(image, 30, 41), ref[0].permute(1, 2, 0).numpy(), atol=1e-6)
