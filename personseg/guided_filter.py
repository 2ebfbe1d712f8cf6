"""Guided filter for edge-aware mask refinement, in numpy and OpenCV (no torch): what inference runs.

He, Sun, Tang, "Guided Image Filtering" (ECCV 2010 / TPAMI 2013), Algorithm 1 with the colour guide,
in the fast variant of He & Sun, "Fast Guided Filter" (arXiv 2015): the linear coefficients (A, b) are
solved at the model's resolution and only their bilinear upsampling touches the full-resolution photo.
The differentiable torch version (training, `GuidedFilterRefiner`) is `personseg.guided_filter_torch`;
this one gives the same alpha within 1e-3 (tests/test_guided_filter.py) in a few milliseconds.
"""
from __future__ import annotations

import cv2
import numpy as np

_TORCH_NAMES = ("box_filter", "guided_filter", "fast_guided_filter", "GuidedFilterRefiner")


def __getattr__(name: str):
    """The torch functions still import from here (`from personseg.guided_filter import box_filter`)."""
    if name in _TORCH_NAMES:
        from personseg import guided_filter_torch

        return getattr(guided_filter_torch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_radius(h: int, w: int) -> int:
    """Default radius in low-resolution pixels: max(1, round(min(h, w) / 180)); 1 at 320x180.

    Tuned with benchmarks/guided_filter_boundary.py --sweep (see benchmarks/README.md): every larger
    radius scored worse, as it copies more of the photo's texture into the mask.
    """
    return max(1, round(min(h, w) / 180))


def area_downsample(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) float32 in [0, 1]: the mean of each output pixel's source cells, the
    cells of torch's `F.interpolate(mode="area")` (adaptive average pooling: rows floor(i H / h) to
    ceil((i + 1) H / h)). Exact integer sums from `cv2.integral`, so it matches the torch filter;
    cv2.INTER_AREA weighs cut cells fractionally and moves A, which eps = 1e-5 makes sensitive."""
    H, W = rgb.shape[:2]
    S = cv2.integral(rgb, sdepth=cv2.CV_32S)  # (H + 1, W + 1, 3)
    i, j = np.arange(h), np.arange(w)
    y0, y1 = i * H // h, -(-(i + 1) * H // h)
    x0, x1 = j * W // w, -(-(j + 1) * W // w)
    rows = S[y1] - S[y0]  # (h, W + 1, 3): the cells' row sums, separable
    sums = rows[:, x1] - rows[:, x0]
    count = (y1 - y0)[:, None] * (x1 - x0)[None, :] * 255.0
    return (sums / count[..., None]).astype(np.float32)


class _Planes:
    """Box means of many (h, w) planes with one OpenCV call: the planes lie one under another in a
    single tall image, r rows of zeros after each, so no window reaches into the next plane and
    BORDER_CONSTANT (zeros) gives the clipped-window sums; dividing by the number of pixels inside
    the window keeps borders from darkening, as in He's code."""

    def __init__(self, count: int, h: int, w: int, r: int):
        self.h, self.r = h, r
        self.buffer = np.zeros((count, h + r, w), np.float64)
        self.planes = self.buffer[:, :h]  # write the inputs here

        def inside(n: int) -> np.ndarray:
            i = np.arange(n)
            return np.minimum(i + r, n - 1) - np.maximum(i - r, 0) + 1

        self.inv_count = 1.0 / np.outer(inside(h), inside(w))

    def mean(self) -> np.ndarray:
        """(count, h, w) float64 box means of `planes`."""
        k = 2 * self.r + 1
        count, hr, w = self.buffer.shape
        sums = cv2.boxFilter(self.buffer.reshape(count * hr, w), -1, (k, k), normalize=False,
                             borderType=cv2.BORDER_CONSTANT)
        return sums.reshape(count, hr, w)[:, :self.h] * self.inv_count


def coefficients(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """Steps 1-4 of Algorithm 1 for the colour guide: guide (h, w, 3) in [0, 1], src (h, w) ->
    box-averaged (A_r, A_g, A_b, b) as (4, h, w) float64, with q = A . I + b.

    In float64: at the model's resolution it costs little more than float32 (float32 on centered inputs
    was 1/4 faster, but a box mean stored in float32 carries ~1e-8 of rounding, which the division by
    a flat patch's variance + eps = 1e-5 amplifies to over 1e-3 of alpha on a few pixels of real photos;
    the torch filter in float32 has that error; this one stays within 1e-6 of exact)."""
    h, w = src.shape
    # The filter commutes with shifting I and p, so center them (a constant src stays exactly constant).
    center_I = guide.reshape(-1, 3).mean(0, dtype=np.float64)
    center_p = float(src.mean(dtype=np.float64))
    first = _Planes(13, h, w, r)
    P = first.planes
    np.subtract(np.moveaxis(guide, -1, 0), center_I[:, None, None], out=P[0:3])
    np.subtract(src, center_p, out=P[3])
    np.multiply(P[0:3], P[3], out=P[4:7])
    for k, (i, j) in enumerate(((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))):
        np.multiply(P[i], P[j], out=P[7 + k])
    m = first.mean()
    mI, mp = m[0:3], m[3]
    c0, c1, c2 = m[4:7] - mI * mp
    s00, s01, s02 = m[7] - mI[0] * mI[0], m[8] - mI[0] * mI[1], m[9] - mI[0] * mI[2]
    s11, s12, s22 = m[10] - mI[1] * mI[1], m[11] - mI[1] * mI[2], m[12] - mI[2] * mI[2]
    # (Sigma + eps U) a = cov_Ip per pixel by closed-form LDL^T, as the torch version: stable in float32
    # when Sigma is near rank 1 (gray photos); each pivot is >= eps, so the clamp only removes rounding.
    d0 = np.maximum(s00 + eps, eps)
    l10, l20 = s01 / d0, s02 / d0
    d1 = np.maximum(s11 + eps - l10 * s01, eps)
    l21 = (s12 - l20 * s01) / d1
    d2 = np.maximum(s22 + eps - l20 * s02 - l21 * l21 * d1, eps)
    y1 = c1 - l10 * c0
    second = _Planes(4, h, w, r)
    A = second.planes
    np.divide(c2 - l20 * c0 - l21 * y1, d2, out=A[2])
    np.subtract(y1 / d1, l21 * A[2], out=A[1])
    np.subtract(c0 / d0 - l10 * A[1], l20 * A[2], out=A[0])
    np.subtract(mp, A[0] * mI[0] + A[1] * mI[1] + A[2] * mI[2], out=A[3])
    mean = second.mean()
    # undo the centering: q = A . (I - cI) + b + cp = A . I + (b + cp - A . cI)
    mean[3] += center_p - (mean[0] * center_I[0] + mean[1] * center_I[1] + mean[2] * center_I[2])
    return mean


def refine_alpha(image_rgb_uint8: np.ndarray, alpha_lr: np.ndarray, r: int | None = None,
                 eps: float = 1e-5, guide_lr: np.ndarray | None = None) -> np.ndarray:
    """Upsample a low-resolution alpha to the image's size along the image's edges.

    image_rgb_uint8 (H, W, 3) uint8, alpha_lr (h, w) float in [0, 1] -> (H, W) float32 in [0, 1].
    r is in alpha_lr pixels, default default_radius(h, w). eps = 1e-5 scored best with 1e-6 in the
    sweep (1e-3 and 1e-4 worse). Measured on real photos, this beat bilinear upsampling only on
    portraits: see benchmarks/README.md. `guide_lr`: the photo already `area_downsample`d to (h, w)
    (the predictor makes its model input from it, so the photo is downsampled once).

    Cost: the solve runs at (h, w); at full size only a 4-channel bilinear resize, a multiply and a
    channel sum, all OpenCV (the 1/255 of the guide is folded into A, the 1 into an alpha channel).
    """
    if image_rgb_uint8.ndim != 3 or image_rgb_uint8.shape[2] != 3 or alpha_lr.ndim != 2:
        raise ValueError(f"expected image (H, W, 3) and alpha (h, w), got {image_rgb_uint8.shape} "
                         f"and {alpha_lr.shape}; stack gray images to 3 channels")
    h, w = alpha_lr.shape
    r = default_radius(h, w) if r is None else r
    rgb = np.ascontiguousarray(image_rgb_uint8, dtype=np.uint8)
    guide = area_downsample(rgb, h, w) if guide_lr is None else guide_lr
    coef = coefficients(guide, np.asarray(alpha_lr, np.float32), r, eps)
    return apply_coefficients(rgb, coef)


def apply_coefficients(rgb: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """The full-resolution step of the fast guided filter: (A_r, A_g, A_b, b) (4, h, w) for a guide in
    [0, 1], bilinearly upsampled to the size of `rgb` (H, W, 3) uint8 and applied: (H, W) float32 alpha
    A . I + b clipped to [0, 1]. Shared by the analytic filter and the trained one (`DeepRefiner`)."""
    H, W = rgb.shape[:2]
    # Plane by plane (a 4-channel multiply and cv2.transform took twice as long): b first, then each
    # A_c times its uint8 colour plane accumulated into it; 1/255 is folded into A (= torch bilinear,
    # align_corners=False, for the resizes).
    A = np.asarray(coef, np.float32) * np.float32(1 / 255)
    up = lambda plane: cv2.resize(plane, (W, H), interpolation=cv2.INTER_LINEAR)  # noqa: E731
    q = up(np.ascontiguousarray(A[3])) * np.float32(255)
    for c, plane in enumerate(cv2.split(np.ascontiguousarray(rgb, dtype=np.uint8))):
        cv2.accumulateProduct(up(np.ascontiguousarray(A[c])), plane.astype(np.float32), q)
    return np.clip(q, 0, 1, out=q)
