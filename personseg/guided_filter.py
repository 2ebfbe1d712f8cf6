"""Guided filter for edge-aware mask refinement, in numpy and OpenCV (no torch): what inference runs.

He, Sun, Tang, "Guided Image Filtering" (ECCV 2010 / TPAMI 2013), Algorithm 1 with the colour guide,
in the fast variant of He & Sun, "Fast Guided Filter" (arXiv 2015): the linear coefficients (A, b) are
solved at the model's resolution and only their bilinear upsampling touches the full-resolution photo.
The differentiable torch version (training, `GuidedFilterRefiner`) is `personseg.guided_filter_torch`;
this one gives the same alpha within 1e-3 (tests/test_guided_filter.py) in a few milliseconds.
"""
from __future__ import annotations

import math
import threading
from functools import lru_cache

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
    y0, y1, c0, c1, scale = _area_cells(H, W, h, w)
    S = cv2.integral(rgb, sdepth=cv2.CV_32S).reshape(H + 1, (W + 1) * 3)  # RGB interleaved in each row
    rows = S.take(y1, axis=0)
    rows -= S.take(y0, axis=0)  # (h, (W + 1) * 3): prefix sums along x of each output row's cells
    sums = rows.take(c1, axis=1)
    sums -= rows.take(c0, axis=1)
    out = sums.astype(np.float32)
    out *= scale
    return out.reshape(h, w, 3)


@lru_cache(maxsize=16)
def _area_cells(H: int, W: int, h: int, w: int) -> tuple[np.ndarray, ...]:
    """The cells of an (H, W) -> (h, w) area shrink, as indices into the integral image: rows y0, y1 (h,),
    columns c0, c1 (3 w,) of the RGB-interleaved row, and 1 / (cell pixels * 255) as (h, 3 w) float32.
    Cached: a video or a folder of same-size photos asks for the same cells every frame."""
    i, j, rgb = np.arange(h), np.arange(w), np.arange(3)
    y0, y1 = i * H // h, -(-(i + 1) * H // h)
    x0, x1 = j * W // w, -(-(j + 1) * W // w)
    c0, c1 = (3 * x0[:, None] + rgb).ravel(), (3 * x1[:, None] + rgb).ravel()
    scale = (1.0 / ((y1 - y0)[:, None] * np.repeat(x1 - x0, 3) * 255.0)).astype(np.float32)
    cells = (y0, y1, c0, c1, scale)
    for a in cells:
        a.flags.writeable = False
    return cells


_SCRATCH_MAX_BYTES = 32 << 20
_scratch = threading.local()


def _scratch_array(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """An array of this thread's, reused from call to call (its contents are left over). Fresh memory costs
    a page fault per 4 KB page on first touch, and at the model's resolution those faults took longer than
    the arithmetic (the filter's old 13 float64 planes: ~6 ms of faults, 1 ms of box filter on the 2-core
    VM). Arrays over _SCRATCH_MAX_BYTES (a full-resolution alpha as `src`) are not kept."""
    dtype, size = np.dtype(dtype), math.prod(shape)
    if size * dtype.itemsize > _SCRATCH_MAX_BYTES:
        return np.empty(shape, dtype)
    buffer = getattr(_scratch, name, None)
    if buffer is None or buffer.size < size or buffer.dtype != dtype:
        buffer = np.empty(size, dtype)
        setattr(_scratch, name, buffer)
    return buffer[:size].reshape(shape)


class _Planes:
    """Box means of many (h, w) planes with one OpenCV call: the planes lie one under another in a
    single tall image, r rows of zeros after each, so no window reaches into the next plane and
    BORDER_CONSTANT (zeros) gives the clipped-window sums. cv2.boxFilter divides by the full window's
    (2r + 1)^2 pixels as it goes; the border rows and columns, whose windows hold fewer, are rescaled
    after, so borders don't darken (as He's code). The stack is the thread's scratch (`name`)."""

    def __init__(self, name: str, count: int, h: int, w: int, r: int, dtype):
        self.h, self.r = h, r
        self.buffer = _scratch_array(name, (count, h + r, w), dtype)
        self.buffer[:, h:] = 0
        self.planes = self.buffer[:, :h]  # write the inputs here

    def mean(self) -> np.ndarray:
        """(count, h, w) box means of `planes`, computed in place (a view of the scratch stack)."""
        k = 2 * self.r + 1
        count, hr, w = self.buffer.shape
        tall = self.buffer.reshape(count * hr, w)
        cv2.boxFilter(tall, -1, (k, k), tall, normalize=True, borderType=cv2.BORDER_CONSTANT)
        means = self.planes
        rows, row_scale = _short_windows(self.h, self.r)
        cols, col_scale = _short_windows(w, self.r)
        means[:, rows] *= row_scale[:, None]
        means[:, :, cols] *= col_scale
        return means


def _short_windows(n: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """The positions along a length-n axis whose clipped window holds fewer than 2r + 1 pixels, and the
    factor (2r + 1) / pixels that turns a full window's mean into theirs."""
    i = np.arange(n)
    inside = np.minimum(i + r, n - 1) - np.maximum(i - r, 0) + 1
    short = np.flatnonzero(inside < 2 * r + 1)
    return short, (2 * r + 1) / inside[short]


_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))  # upper triangle of Sigma


def coefficients(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """Steps 1-4 of Algorithm 1 for the colour guide: guide (h, w, 3) in [0, 1], src (h, w) ->
    box-averaged (A_r, A_g, A_b, b) as (4, h, w) float32, with q = A . I + b.

    The moments and the solve are float64: a float32 box mean of I^2 carries ~1e-8 of rounding, which the
    division by a flat patch's variance + eps = 1e-5 amplifies to over 1e-3 of alpha on a few pixels of
    real photos (the torch filter in float32 has that error). float32 inputs and their products are exact
    in float64 (24 + 24 bits < 53) and OpenCV sums in double, so E[I I^T] - E[I] E[I]^T loses nothing
    before the subtraction and no centring is needed; this stays within ~1e-5 of the exact filter. Only A
    and b, whose own rounding is harmless, are box-averaged in float32."""
    h, w = src.shape
    first = _Planes("moments", 13, h, w, r, np.float64)
    P = first.planes  # I (3), p, I * p (3), the upper triangle of I I^T (6)
    np.copyto(P[0:3], np.moveaxis(guide, -1, 0))
    P[3] = src
    np.multiply(P[0:3], P[3], out=P[4:7])
    for k, (i, j) in enumerate(_PAIRS):
        np.multiply(P[i], P[j], out=P[7 + k])
    m = first.mean()
    mI, mp = m[0:3], m[3]
    # From here in place, over the moments: numpy's temporaries of this size were fresh memory often
    # enough that their page faults doubled the time of this part. t: the one scratch plane for products.
    t = _scratch_array("product", (h, w), np.float64)

    def minus(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """x -= a * b, in place."""
        return np.subtract(x, np.multiply(a, b, out=t), out=x)

    for c in range(3):  # cov(I, p)
        minus(m[4 + c], mI[c], mp)
    for k, (i, j) in enumerate(_PAIRS):  # Sigma
        minus(m[7 + k], mI[i], mI[j])
    c0, c1, c2 = m[4:7]
    s00, s01, s02, s11, s12, s22 = m[7:13]
    # (Sigma + eps U) a = cov_Ip per pixel by closed-form LDL^T, as the torch version: stable when Sigma is
    # near rank 1 (gray photos); each pivot is >= eps, so the clamp only removes rounding. Written as
    #   d0 = s00 + eps, l10 = s01 / d0, l20 = s02 / d0, d1 = s11 + eps - l10 s01,
    #   l21 = (s12 - l20 s01) / d1, d2 = s22 + eps - l20 s02 - l21 (s12 - l20 s01)   [= ... - l21^2 d1],
    #   y1 = c1 - l10 c0, a2 = (c2 - l20 c0 - l21 y1) / d2, a1 = y1 / d1 - l21 a2, a0 = c0 / d0 - l10 a1 - l20 a2,
    # each result over a moment plane it no longer needs (the l's in scratch).
    l10, l20, l21 = _scratch_array("factors", (3, h, w), np.float64)

    def pivot(x: np.ndarray) -> np.ndarray:
        """x = max(x + eps, eps), in place."""
        return np.maximum(np.add(x, eps, out=x), eps, out=x)

    d0 = pivot(s00)
    np.divide(s01, d0, out=l10)
    np.divide(s02, d0, out=l20)
    d1 = pivot(minus(s11, l10, s01))
    np.divide(minus(s12, l20, s01), d1, out=l21)
    d2 = pivot(minus(minus(s22, l20, s02), l21, s12))
    y1 = minus(c1, l10, c0)
    a2 = np.divide(minus(minus(c2, l20, c0), l21, y1), d2, out=c2)
    a1 = minus(np.divide(y1, d1, out=c1), l21, a2)
    a0 = minus(minus(np.divide(c0, d0, out=c0), l10, a1), l20, a2)
    b = minus(minus(minus(mp, a0, mI[0]), a1, mI[1]), a2, mI[2])
    second = _Planes("coefficients", 4, h, w, r, np.float32)
    A = second.planes
    A[0], A[1], A[2], A[3] = a0, a1, a2, b
    return second.mean().copy()  # the caller's own array, not the scratch stack


def refine_alpha(image_rgb_uint8: np.ndarray, alpha_lr: np.ndarray, r: int | None = None,
                 eps: float = 1e-5, guide_lr: np.ndarray | None = None) -> np.ndarray:
    """Upsample a low-resolution alpha to the image's size along the image's edges.

    image_rgb_uint8 (H, W, 3) uint8, alpha_lr (h, w) float in [0, 1] -> (H, W) float32 in [0, 1].
    r is in alpha_lr pixels, default default_radius(h, w). eps = 1e-5 scored best with 1e-6 in the
    sweep (1e-3 and 1e-4 worse). Measured on real photos, this beat bilinear upsampling only on
    portraits: see benchmarks/README.md. `guide_lr`: the photo already `area_downsample`d to (h, w)
    (the predictor makes its model input from it, so the photo is downsampled once).

    Cost: the solve runs at (h, w); at full size only four bilinear resizes, three multiply-adds and a
    clip, all OpenCV (benchmarks/guided_filter_speed.py times each step).
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
    coef = np.ascontiguousarray(coef, dtype=np.float32)

    def up(plane: np.ndarray, out: np.ndarray) -> np.ndarray:  # = torch bilinear, align_corners=False
        return cv2.resize(plane, (W, H), out, interpolation=cv2.INTER_LINEAR)

    # Plane by plane, one full-resolution temporary reused: at 1080p each pass is memory-bound, and a
    # 4-channel resize, multiply and cv2.transform moved twice the bytes.
    q = up(coef[3], np.empty((H, W), np.float32))  # b
    a = np.empty((H, W), np.float32)
    for c, plane in enumerate(cv2.split(np.ascontiguousarray(rgb, dtype=np.uint8))):
        cv2.multiply(up(coef[c], a), plane, a, scale=1 / 255, dtype=cv2.CV_32F)  # A_c I_c, I_c in [0, 1]
        cv2.add(q, a, q)
    return np.clip(q, 0, 1, out=q)
