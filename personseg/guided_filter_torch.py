"""Guided filter in torch: differentiable, so it can be trained (`GuidedFilterRefiner`), and the
reference the inference version in `personseg.guided_filter` (numpy/OpenCV) is tested against.

He, Sun, Tang, "Guided Image Filtering" (ECCV 2010 / TPAMI 2013), Algorithm 1, and the fast
guided filter of He & Sun, "Fast Guided Filter" (arXiv 2015): the linear coefficients (A, b) are
computed at low resolution and only their upsampled versions touch the high-resolution guide.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def box_filter(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over the (2r+1)x(2r+1) window, windows clipped at the borders.

    (B, C, H, W) -> (B, C, H, W). Like He's reference code the sum is divided by the number of
    pixels really in the window (N = box(ones)), so borders are not darkened. O(1) per pixel in r:
    separable cumulative sums. The per-channel mean is subtracted first so the float32 running
    sums stay small (without it the error grows to ~1e-5 on 1080p).
    """
    H, W = x.shape[-2:]
    mean = x.mean((-2, -1), keepdim=True)
    y = x - mean
    # Pad r+1 zeros before and r after: out[i] = c[i + 2r + 1] - c[i] is the clipped window sum.
    y = F.pad(y, (0, 0, r + 1, r)).cumsum(-2)
    y = y[..., 2 * r + 1:, :] - y[..., :H, :]
    y = F.pad(y, (r + 1, r)).cumsum(-1)
    y = y[..., 2 * r + 1:] - y[..., :W]
    return y / (_window_count(H, r, x)[:, None] * _window_count(W, r, x)) + mean


def _window_count(n: int, r: int, like: torch.Tensor) -> torch.Tensor:
    """Number of pixels of a length-n axis inside each clipped window: (n,)."""
    i = torch.arange(n, dtype=like.dtype, device=like.device)
    return (i + r).clamp(max=n - 1) - (i - r).clamp(min=0) + 1


def _coefficients(guide: torch.Tensor, src: torch.Tensor, r: int, eps) -> tuple[torch.Tensor, torch.Tensor]:
    """Box-averaged linear coefficients of Algorithm 1 (steps 1-4).

    guide (B, C, h, w) with C in {1, 3}, src (B, 1, h, w) -> mean_A (B, C, h, w), mean_b (B, 1, h, w),
    such that q = sum_c mean_A[:, c] * I[:, c] + mean_b.
    """
    if guide.shape[0] != src.shape[0] or guide.shape[-2:] != src.shape[-2:] or src.shape[1] != 1:
        raise ValueError(f"guide {tuple(guide.shape)} and src {tuple(src.shape)} must be (B, C, h, w) "
                         "and (B, 1, h, w) with the same B, h, w; resize one of them first")
    # The filter commutes with shifting I and p, so center them: float32 then loses far less to the
    # cancellation in E[Ip] - E[I]E[p] (a constant src stays exactly constant, not ~6e-5 off).
    center_I, center_p = guide.mean((-2, -1), keepdim=True), src.mean((-2, -1), keepdim=True)
    guide, src = guide - center_I, src - center_p
    C = guide.shape[1]
    if C == 1:
        m = box_filter(torch.cat([guide, src, guide * src, guide * guide], 1), r)
        mean_I, mean_p, corr_Ip, corr_II = m.split(1, 1)
        A = (corr_Ip - mean_I * mean_p) / ((corr_II - mean_I * mean_I).clamp(min=0) + eps)
    elif C == 3:
        pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]  # upper triangle of Sigma
        prods = torch.stack([guide[:, i] * guide[:, j] for i, j in pairs], 1)
        m = box_filter(torch.cat([guide, src, guide * src, prods], 1), r)
        mean_I, mean_p, corr_Ip, corr_II = m.split([3, 1, 3, 6], 1)
        cov_Ip = corr_Ip - mean_I * mean_p
        sigma = corr_II - torch.stack([mean_I[:, i] * mean_I[:, j] for i, j in pairs], 1)
        s00, s01, s02, s11, s12, s22 = sigma.unbind(1)
        # Solve (Sigma + eps U) a = cov_Ip per pixel by a closed-form LDL^T factorization: ~10x
        # faster on CPU than torch.linalg.solve on (B, h, w, 3, 3), and, unlike the adjugate whose
        # determinant cancels, stable in float32 when Sigma is near rank 1 (gray photos, small eps).
        # Each pivot is a Schur complement of a matrix with eigenvalues >= eps, so clamping at eps
        # only removes rounding noise.
        d0 = (s00 + eps).clamp(min=eps)
        l10, l20 = s01 / d0, s02 / d0
        d1 = (s11 + eps - l10 * s01).clamp(min=eps)
        l21 = (s12 - l20 * s01) / d1
        d2 = (s22 + eps - l20 * s02 - l21 * l21 * d1).clamp(min=eps)
        c0, c1, c2 = cov_Ip.unbind(1)
        y1 = c1 - l10 * c0
        a2 = (c2 - l20 * c0 - l21 * y1) / d2
        a1 = y1 / d1 - l21 * a2
        a0 = c0 / d0 - l10 * a1 - l20 * a2
        A = torch.stack([a0, a1, a2], 1)
    else:
        raise ValueError(f"guide must have 1 or 3 channels, got {C}; convert it to gray or RGB")
    b = mean_p - (A * mean_I).sum(1, keepdim=True)
    mean_A, mean_b = box_filter(torch.cat([A, b], 1), r).split([C, 1], 1)
    return mean_A, mean_b + center_p - (mean_A * center_I).sum(1, keepdim=True)


def guided_filter(guide: torch.Tensor, src: torch.Tensor, r: int, eps) -> torch.Tensor:
    """Guided filter: guide (B, 1|3, H, W), src (B, 1, H, W) -> (B, 1, H, W).

    Gray guide: scalar a per window. RGB guide: the color guided filter, a = (Sigma + eps U)^-1 cov(I, p).
    eps is a float or a scalar tensor (differentiable); the guide is expected in [0, 1].
    """
    mean_A, mean_b = _coefficients(guide, src, r, eps)
    return (mean_A * guide).sum(1, keepdim=True) + mean_b


def fast_guided_filter(guide_hr: torch.Tensor, src_lr: torch.Tensor, r: int, eps,
                       guide_lr: torch.Tensor | None = None) -> torch.Tensor:
    """Fast guided filter: guide_hr (B, 1|3, H, W), src_lr (B, 1, h, w) -> (B, 1, H, W).

    A and b are solved at (h, w) with radius r in low-resolution pixels, upsampled bilinearly to
    (H, W) and applied to the full-resolution guide. guide_lr defaults to guide_hr area-downsampled.
    """
    if guide_lr is None:
        guide_lr = F.interpolate(guide_hr, size=src_lr.shape[-2:], mode="area")
    mean_A, mean_b = _coefficients(guide_lr, src_lr, r, eps)
    return apply_coefficients(torch.cat([mean_A, mean_b], 1), guide_hr)


def apply_coefficients(coef: torch.Tensor, guide_hr: torch.Tensor) -> torch.Tensor:
    """The fast filter's full-resolution step: coef (B, C + 1, h, w) = (A, b) bilinearly upsampled to
    guide_hr (B, C, H, W) and applied, A . I + b -> (B, 1, H, W) (numpy: guided_filter.apply_coefficients)."""
    up = F.interpolate(coef, size=guide_hr.shape[-2:], mode="bilinear", align_corners=False)
    A, b = up.split([guide_hr.shape[1], 1], 1)
    return (A * guide_hr).sum(1, keepdim=True) + b


class GuidedFilterRefiner(nn.Module):
    """Learnable fast guided filter: (guide_hr (B, 1|3, H, W), x_lr (B, 1, h, w)) -> prob (B, 1, H, W).

    x_lr is logits when from_logits (a sigmoid is applied first), else a probability. eps is
    learned as log_eps so it stays positive; r is fixed (in low-resolution pixels).
    """

    def __init__(self, r: int = 1, eps: float = 1e-5, from_logits: bool = True):
        super().__init__()
        self.r = r
        self.from_logits = from_logits
        self.log_eps = nn.Parameter(torch.tensor(math.log(eps)))

    @property
    def eps(self) -> torch.Tensor:
        return self.log_eps.exp()

    def forward(self, guide_hr: torch.Tensor, x_lr: torch.Tensor) -> torch.Tensor:
        prob_lr = torch.sigmoid(x_lr) if self.from_logits else x_lr
        return fast_guided_filter(guide_hr, prob_lr, self.r, self.eps).clamp(0, 1)


def refine_alpha_torch(image_rgb_uint8, alpha_lr, r: int, eps: float = 1e-5, dtype=torch.float32):
    """`personseg.guided_filter.refine_alpha` in torch (what inference ran before it moved to numpy/OpenCV):
    (H, W, 3) uint8 and (h, w) float -> (H, W) float32 numpy, in [0, 1]. `dtype` float64 gives the
    exact filter (float32 is up to ~3e-3 off it on real photos at eps 1e-5, the numpy version ~3e-4)."""
    import numpy as np

    with torch.inference_mode():
        image = np.ascontiguousarray(image_rgb_uint8)
        image = image if image.flags.writeable else image.copy()  # torch warns on read-only arrays (PIL's)
        guide = torch.from_numpy(image).permute(2, 0, 1)[None].to(dtype).div_(255)
        src = torch.from_numpy(np.ascontiguousarray(alpha_lr, dtype=np.float32))[None, None].to(dtype)
        out = fast_guided_filter(guide, src, r, eps)[0, 0].clamp_(0, 1)
    return out.float().numpy()


class CoefficientNet(nn.Module):
    """The deep guided filter's learned part (Wu et al., "Fast End-to-End Trainable Guided Filter", CVPR
    2018; RVM's DeepGuidedFilterRefiner): at the model's resolution, (coef (B, 4, h, w) the analytic
    guided filter's box-averaged (A_r, A_g, A_b, b), guide_lr (B, 3, h, w) in [0, 1], prob_lr (B, 1, h, w))
    -> corrected coef (B, 4, h, w). Per-pixel convolutions over the local statistics (as RVM's) plus one
    depthwise 3x3 for context, ~640 multiply-adds a pixel it runs on. The last layer starts at zero,
    so an untrained net is the analytic filter; this module alone is exported to ONNX (the full-resolution
    part stays numpy/OpenCV: `personseg.guided_filter.apply_coefficients`).

    scale 2 runs the net on the inputs averaged over 2x2 pixels and upsamples its correction (bilinear,
    exactly 2x) before adding it to coef: a quarter of the pixels, for a correction that is smoother than
    the coefficients it corrects. squash: how the coefficients enter the net, "asinh" (refiner4) or
    "log1p" (sign(x) log(1 + |x|), the same shape for one op fewer)."""

    IN_CHANNELS = 11
    SQUASH = ("asinh", "log1p")

    def __init__(self, hidden: int = 16, r: int = 1, scale: int = 1, squash: str = "asinh"):
        super().__init__()
        if scale not in (1, 2) or squash not in self.SQUASH:
            raise ValueError(f"CoefficientNet: scale {scale!r} (1 or 2), squash {squash!r} (one of {self.SQUASH})")
        self.r, self.scale, self.squash = r, scale, squash
        self.body = nn.Sequential(
            nn.Conv2d(self.IN_CHANNELS, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(inplace=True), nn.Conv2d(hidden, 4, 1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    @property
    def reach(self) -> int:
        """How far (in pixels of coef) an output pixel sees: the box filter and the 3x3, each of radius
        r and 1 at the net's scale, and at scale 2 the 2x2 average and the upsampling (training crops)."""
        return (self.r + 1) * self.scale + 2 * (self.scale - 1)

    def features(self, coef: torch.Tensor, guide_lr: torch.Tensor, prob_lr: torch.Tensor) -> torch.Tensor:
        """(B, 11, h, w): the squashed coefficients (A reaches hundreds where the photo is flat), the
        probability with its local mean and spread, the centred guide and its local spread."""
        k = 2 * self.r + 1

        def box(x: torch.Tensor) -> torch.Tensor:  # clipped-window mean, as box_filter; ONNX AveragePool
            return F.avg_pool2d(x, k, stride=1, padding=self.r, count_include_pad=False)

        mean_p = box(prob_lr)
        std_p = (box(prob_lr * prob_lr) - mean_p * mean_p).clamp(min=0).add(1e-6).sqrt()
        std_I = (box(guide_lr * guide_lr) - box(guide_lr) ** 2).clamp(min=0).sum(1, keepdim=True).add(1e-6).sqrt()
        # written out (the TorchScript ONNX exporter has no aten::asinh), odd so it stays exact for x < 0
        a = coef.abs()
        squashed = torch.sign(coef) * torch.log(a + torch.sqrt(a * a + 1) if self.squash == "asinh" else a + 1)
        return torch.cat([squashed, prob_lr, mean_p, std_p, guide_lr - 0.5, std_I], 1)

    def forward(self, coef: torch.Tensor, guide_lr: torch.Tensor, prob_lr: torch.Tensor) -> torch.Tensor:
        if self.scale == 1:
            return coef + self.body(self.features(coef, guide_lr, prob_lr))
        # 2x2 means (a last odd row or column: the mean of what is there), then exactly 2x back, cropped
        small = F.avg_pool2d(torch.cat([coef, guide_lr, prob_lr], 1), 2, ceil_mode=True)
        delta = self.body(self.features(*small.split([4, 3, 1], 1)))
        delta = F.interpolate(delta, scale_factor=2.0, mode="bilinear", align_corners=False)
        return coef + delta[:, :, :coef.shape[2], :coef.shape[3]]


class DeepGuidedFilterRefiner(nn.Module):
    """Trainable fast guided filter: (guide_hr (B, 3, H, W) in [0, 1], prob_lr (B, 1, h, w)) -> alpha
    (B, 1, H, W). The analytic coefficients are solved at (h, w) (in float64, as the numpy inference code),
    corrected by `CoefficientNet`, bilinearly upsampled and applied to the full-resolution guide, so one
    model serves any photo size. r: default_radius(h, w) when None, as `refine_alpha`."""

    def __init__(self, hidden: int = 16, eps: float = 1e-5, r: int | None = None, scale: int = 1,
                 squash: str = "asinh"):
        super().__init__()
        self.net = CoefficientNet(hidden, r or 1, scale, squash)
        self.eps, self.r = eps, r

    def coefficients(self, guide_lr: torch.Tensor, prob_lr: torch.Tensor) -> torch.Tensor:
        """The analytic (A, b) of `refine_alpha`: (B, 4, h, w) float32, no gradient (fixed inputs)."""
        from personseg.guided_filter import default_radius

        r = self.r or default_radius(*prob_lr.shape[-2:])
        with torch.no_grad():
            mean_A, mean_b = _coefficients(guide_lr.double(), prob_lr.double(), r, self.eps)
        return torch.cat([mean_A, mean_b], 1).float()

    def forward(self, guide_hr: torch.Tensor, prob_lr: torch.Tensor, guide_lr: torch.Tensor | None = None,
                coef: torch.Tensor | None = None) -> torch.Tensor:
        """guide_lr (B, 3, h, w) and the analytic coef (B, 4, h, w) may come precomputed (training caches
        them per sample: `personseg.guided_filter.area_downsample` and `coefficients` give the same)."""
        if guide_lr is None:
            guide_lr = F.interpolate(guide_hr, size=prob_lr.shape[-2:], mode="area")
        coef = self.net(self.coefficients(guide_lr, prob_lr) if coef is None else coef, guide_lr, prob_lr)
        return apply_coefficients(coef, guide_hr).clamp(0, 1)
