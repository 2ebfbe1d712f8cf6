"""Alpha-matting errors and foreground colour estimation, in numpy and OpenCV (no torch).

Errors: Rhemann et al., "A Perceptually Motivated Online Benchmark for Image Matting" (CVPR 2009), the
alphamatting.com measures, as computed by the evaluation code of Deep Image Matting (Xu et al. 2017, Ning
Xu's MATLAB `compute_*_loss.m`) that later papers (GCA, MODNet, MatteFormer) reuse. Alphas are floats in
[0, 1] (the MATLAB code divides 8-bit mattes by 255 first); `region` is where errors count (the trimap's
unknown area there, the whole picture by default, as portrait matting reports it). Units as those papers
print them: SAD, gradient and connectivity are sums divided by 1000, MSE a plain mean. Clips: `dtssd`
(temporal coherence, Erofeev et al. 2015) and `clip_errors`.

Foreground: Forte & Pitie, "Approximate Fast Foreground Colour Estimation" (ICIP 2021), Blur-Fusion x2.
A cut-out pasted with the photo's own colours carries a rim of the old background wherever alpha is
fractional (I = alpha F + (1 - alpha) B); the estimated F removes it. pymatting's `estimate_foreground_ml`
(Germer et al. 2020) solves the same problem better but needs numba and took seconds a 720p frame
(benchmarks/matting.py measures both); tests/test_matting.py checks the two agree.
"""
from __future__ import annotations

import cv2
import numpy as np

GRADIENT_SIGMA = 1.4
CONNECTIVITY_STEP = 0.1


def _pair(pred: np.ndarray, target: np.ndarray, region: np.ndarray | None):
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must be (H, W) alphas of one size")
    region = np.ones(pred.shape, bool) if region is None else np.asarray(region, bool)
    if region.shape != pred.shape:
        raise ValueError(f"region {region.shape} must be the alphas' size {pred.shape}")
    return pred, target, region


def sad(pred: np.ndarray, target: np.ndarray, region: np.ndarray | None = None) -> float:
    """Sum of absolute differences over `region`, / 1000. pred, target (H, W) in [0, 1]."""
    pred, target, region = _pair(pred, target, region)
    return float(np.abs(pred - target)[region].sum() / 1000)


def mse(pred: np.ndarray, target: np.ndarray, region: np.ndarray | None = None) -> float:
    """Mean squared difference over `region` (0 for an empty region)."""
    pred, target, region = _pair(pred, target, region)
    return float(((pred - target) ** 2)[region].mean()) if region.any() else 0.0


def gaussian_gradient_kernel(sigma: float = GRADIENT_SIGMA) -> np.ndarray:
    """The x-derivative-of-Gaussian kernel of `gaussgradient.m` (epsilon 1e-2 sets its half size,
    unit L2 norm): (size, size) float64, rows y, columns x; its transpose is the y kernel."""
    half = int(np.ceil(sigma * np.sqrt(-2 * np.log(np.sqrt(2 * np.pi) * sigma * 1e-2))))
    u = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-u ** 2 / (2 * sigma ** 2)) / (sigma * np.sqrt(2 * np.pi))
    dgauss = -u * gauss / sigma ** 2
    h = np.outer(gauss, dgauss)  # h[i, j] = gauss(i - half) * dgauss(j - half)
    return h / np.sqrt((h ** 2).sum())


def _convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """MATLAB's imfilter(image, kernel, 'replicate', 'conv'): a true convolution (flipped kernel)."""
    return cv2.filter2D(image, cv2.CV_64F, cv2.flip(kernel, -1), borderType=cv2.BORDER_REPLICATE)


def gradient_error(pred: np.ndarray, target: np.ndarray, region: np.ndarray | None = None,
                   sigma: float = GRADIENT_SIGMA) -> float:
    """Sum over `region` of the squared difference of the Gaussian-gradient magnitudes (sigma 1.4), / 1000."""
    pred, target, region = _pair(pred, target, region)
    hx = gaussian_gradient_kernel(sigma)

    def magnitude(a: np.ndarray) -> np.ndarray:
        return np.hypot(_convolve(a, hx), _convolve(a, hx.T))

    return float(((magnitude(pred) - magnitude(target)) ** 2)[region].sum() / 1000)


def _largest_component(binary: np.ndarray) -> np.ndarray:
    """(H, W) bool: the largest 4-connected region of `binary` (all False when it is empty)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=4)
    if count <= 1:
        return np.zeros(binary.shape, bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def connectivity_error(pred: np.ndarray, target: np.ndarray, region: np.ndarray | None = None,
                       step: float = CONNECTIVITY_STEP) -> float:
    """Connectivity error, / 1000: for each pixel the level l it stays connected to the largest common
    region of pred >= t and target >= t (t = step, 2 step, ..., 1); phi = 1 - d [d >= 0.15] with
    d = alpha - l, summed |phi_pred - phi_target| over `region`."""
    pred, target, region = _pair(pred, target, region)
    steps = [round(i * step, 10) for i in range(int(round(1 / step)) + 1)]
    level = np.full(pred.shape, -1.0)
    for previous, t in zip(steps, steps[1:]):
        omega = _largest_component((pred >= t) & (target >= t))
        level[(level == -1) & ~omega] = previous
    level[level == -1] = 1

    def phi(a: np.ndarray) -> np.ndarray:
        d = a - level
        return 1 - d * (d >= 0.15)

    return float(np.abs(phi(pred) - phi(target))[region].sum() / 1000)


def matting_errors(pred: np.ndarray, target: np.ndarray, region: np.ndarray | None = None) -> dict[str, float]:
    """{"sad", "mse", "grad", "conn"} of one alpha against its ground truth (module doc for units)."""
    return {"sad": sad(pred, target, region), "mse": mse(pred, target, region),
            "grad": gradient_error(pred, target, region), "conn": connectivity_error(pred, target, region)}


def _clip_pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape or pred.ndim != 3 or pred.shape[0] < 2:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must be (T, H, W) alphas of one size, T >= 2")
    return pred, target


def dtssd(pred, target) -> float:
    """The temporal-coherence error dtSSD (Erofeev et al., "Perceptually Motivated Benchmark for Video
    Matting", BMVC 2015): how much the alpha's change from frame to frame differs from the true change,

        dtSSD = mean over t = 1..T-1 of sqrt(mean over pixels of ((a_t - a_{t-1}) - (g_t - g_{t-1}))^2),

    as RobustVideoMatting's evaluation code computes it per frame (evaluation/evaluate_hr.py,
    `MetricDTSSD`), unscaled (RVM prints it x100) and averaged over the T - 1 frame pairs (RVM counts a 0
    for the first frame in its average, which gives (T - 1) / T of this). pred, target (T, H, W) in [0, 1]:
    a clip's alphas, in order."""
    pred, target = _clip_pair(pred, target)
    change = np.diff(pred, axis=0) - np.diff(target, axis=0)
    return float(np.sqrt((change ** 2).mean(axis=(1, 2))).mean())


def clip_errors(pred, target) -> dict[str, float]:
    """{"dtssd", "mse", "sad"} of a clip's alphas (T, H, W) against its ground truth: dtSSD (`dtssd`),
    MSE over every pixel of every frame, SAD per frame (mean over frames, / 1000 as `sad`)."""
    pred, target = _clip_pair(pred, target)
    return {"dtssd": dtssd(pred, target), "mse": float(((pred - target) ** 2).mean()),
            "sad": float(np.abs(pred - target).sum(axis=(1, 2)).mean() / 1000)}


def edge_band(alpha: np.ndarray, radius: int = 3, low: float = 0.02, high: float = 0.98) -> np.ndarray:
    """(H, W) bool: where `alpha` is fractional (low < alpha < high), grown by `radius` pixels: the
    matting trimap's unknown area, made from a ground-truth alpha."""
    soft = ((alpha > low) & (alpha < high)).astype(np.uint8)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(soft, k) > 0


def _blur_fusion(image: np.ndarray, fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray, r: int,
                 means: tuple[np.ndarray, np.ndarray] | None = None):
    """One Blur-Fusion step: local means of F (alpha-weighted) and B ((1 - alpha)-weighted) over an r x r
    box (or `means` given), then F = F_mean + alpha (I - alpha F_mean - (1 - alpha) B_mean). All float32
    in [0, 1]. Returns F and B_mean."""
    a = alpha[..., None]
    f_mean, b_mean = means or _local_means(fg, bg, alpha, r)
    f = f_mean + a * (image - a * f_mean - (1 - a) * b_mean)
    return np.clip(f, 0, 1, out=f), b_mean


def _local_means(fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """The alpha-weighted r x r box mean of `fg` and the (1 - alpha)-weighted one of `bg`."""
    a = alpha[..., None]
    blurred_alpha = cv2.blur(alpha, (r, r))[..., None]
    f_mean = cv2.blur(fg * a, (r, r)) / (blurred_alpha + 1e-5)
    b_mean = cv2.blur(bg * (1 - a), (r, r)) / ((1 - blurred_alpha) + 1e-5)
    return f_mean, b_mean


def estimate_foreground(rgb: np.ndarray, alpha: np.ndarray, r: int | None = None) -> np.ndarray:
    """The person's own colour where alpha is fractional (Blur-Fusion x2: radius `r`, then 6).

    rgb (H, W, 3) uint8, alpha (H, W) float in [0, 1] -> (H, W, 3) uint8 foreground F with I = alpha F +
    (1 - alpha) B. r = 90, the paper's value, whatever the size: the first pass's window must reach past
    the soft band (a few low-resolution pixels of the model, tens of pixels in a large photo) into clean
    foreground and background. The first pass's means (a 90-pixel box: smooth) are taken at a quarter of
    the size and upsampled, which cut its cost ~10x; benchmarks/matting.py times the whole."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or alpha.shape != rgb.shape[:2]:
        raise ValueError(f"expected rgb (H, W, 3) and alpha (H, W) of its size, got {rgb.shape} and {alpha.shape}")
    r = r or 90
    H, W = alpha.shape
    image = rgb.astype(np.float32) * np.float32(1 / 255)
    a = np.clip(alpha, 0, 1).astype(np.float32)
    k = max(1, min(r // 20, H // 8, W // 8))  # the reduction of the first pass
    if k > 1:
        size = (max(1, W // k), max(1, H // k))
        small_image, small_a = (cv2.resize(x, size, interpolation=cv2.INTER_AREA) for x in (image, a))
        means = _local_means(small_image, small_image, small_a, max(3, round(r / k)))
        means = tuple(cv2.resize(m, (W, H), interpolation=cv2.INTER_LINEAR) for m in means)
        fg, bg = _blur_fusion(image, image, image, a, r, means)
    else:
        fg, bg = _blur_fusion(image, image, image, a, r)
    fg, _ = _blur_fusion(image, fg, bg, a, 6)
    return np.round(fg * 255).astype(np.uint8)
