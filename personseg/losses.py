"""Losses for binary person segmentation, and the seed loss schedule `SegLoss`.

Every loss takes `logits` (B, 1, H, W), a `target` (B, 1, H, W) in [0, 1] (soft values allowed) and
an optional `valid` (B, 1, H, W) bool/float mask: pixels where `valid` is 0 are ignored, they add
nothing to a loss and get no gradient. Each loss returns a scalar tensor.

Region losses (dice, tversky, generalized dice) use soft counts from sigmoid probabilities; the Lovász
hinge works on the logits directly. All are computed per image, then averaged over the batch, so that
a small person in one image is not drowned by a large one in another.
"""

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _valid_mask(valid: Tensor | None, like: Tensor) -> Tensor:
    """`valid` as a float tensor broadcast to `like`'s shape (all ones when None)."""
    if valid is None:
        return torch.ones_like(like)
    return valid.to(like.dtype).expand_as(like)


def _soft_counts(logits: Tensor, target: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image soft (TP, FP, FN), each (B,), over valid pixels only."""
    v = _valid_mask(valid, logits)
    p = torch.sigmoid(logits) * v
    t = target.to(logits.dtype) * v
    tp = (p * t).flatten(1).sum(1)
    fp = (p * (1 - t)).flatten(1).sum(1)
    fn = ((1 - p) * t).flatten(1).sum(1)
    return tp, fp, fn


def bce_loss(logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Binary cross-entropy with logits, averaged over valid pixels (0 when no pixel is valid)."""
    loss = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    v = _valid_mask(valid, logits)
    return (loss * v).sum() / v.sum().clamp_min(1.0)


def tversky_loss(logits: Tensor, target: Tensor, valid: Tensor | None = None,
                 alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0) -> Tensor:
    """1 - (TP + s) / (TP + alpha*FP + beta*FN + s), per image, averaged over the batch.

    As in Salehi et al. 2017 ("Tversky loss function for image segmentation using 3D fully
    convolutional deep networks"), `alpha` weights false positives and `beta` false negatives, so the
    default beta > alpha favours recall. alpha = beta = 0.5 is the dice loss with smoothing 2 * smooth.
    """
    tp, fp, fn = _soft_counts(logits, target, valid)
    index = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    return (1 - index).mean()


def dice_loss(logits: Tensor, target: Tensor, valid: Tensor | None = None, smooth: float = 1.0) -> Tensor:
    """1 - (2*sum(p*t) + s) / (sum(p) + sum(t) + s), per image, averaged over the batch.

    Per image rather than over the whole batch, so each image weighs the same whatever its person size.
    """
    tp, fp, fn = _soft_counts(logits, target, valid)
    # sum(p) + sum(t) = (TP + FP) + (TP + FN)
    dice = (2 * tp + smooth) / (2 * tp + fp + fn + smooth)
    return (1 - dice).mean()


def generalized_dice_loss(logits: Tensor, target: Tensor, valid: Tensor | None = None,
                          eps: float = 1e-7) -> Tensor:
    """Generalized dice loss (Sudre et al. 2017) over foreground and background, per image, batch mean.

    GDL = 1 - 2 * sum_c w_c sum(p_c*t_c) / sum_c w_c sum(p_c + t_c), with w_c = 1 / sum(t_c)^2.
    A class absent from an image's target would get an infinite weight; like MONAI, it gets the weight
    of the other class instead. The weights are scaled to sum to 1 (GDL does not change) and `eps`
    guards the fraction of an image with no valid pixel, whose loss is then 0.
    """
    v = _valid_mask(valid, logits)
    p_fg = torch.sigmoid(logits) * v
    t_fg = target.to(logits.dtype) * v
    p = torch.stack([p_fg, v - p_fg], 1).flatten(2)  # (B, 2, N): foreground, background
    t = torch.stack([t_fg, v - t_fg], 1).flatten(2)
    t_sum = t.sum(2)  # (B, 2)
    w = 1.0 / t_sum**2
    w_other = w.flip(1)
    w = torch.where(torch.isinf(w), w_other, w)
    w = torch.where(torch.isinf(w), torch.ones_like(w), w)  # no valid pixel at all
    w = w / w.sum(1, keepdim=True)
    inter = (w * (p * t).sum(2)).sum(1)
    union = (w * (p + t).sum(2)).sum(1)
    return (1 - (2 * inter + eps) / (union + eps)).mean()


def lovasz_hinge_loss(logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Lovász hinge (Berman et al. 2018, "The Lovász-Softmax loss"), per image, batch mean.

    The convex extension of the Jaccard loss 1 - IoU to real-valued hinge errors max(0, 1 - logit *
    sign): pixels are sorted by error and each error is weighed by how much it adds to 1 - IoU, so the
    loss optimises IoU itself rather than a per-pixel proxy. At logits of 0 (wrong) and +-1 (right) it
    equals 1 - IoU of the right/wrong split exactly. Targets are binarised at 0.5; an image with no
    valid pixel adds 0.
    """
    v = _valid_mask(valid, logits) > 0.5
    losses = []
    for x, t, keep in zip(logits.flatten(1), target.flatten(1), v.flatten(1)):
        x, t = x[keep], (t[keep] > 0.5).to(logits.dtype)
        if x.numel() == 0:
            losses.append(logits.sum() * 0)
            continue
        errors, order = torch.sort(1 - x * (2 * t - 1), descending=True)
        t = t[order]
        inside = t.sum()
        jaccard = 1 - (inside - t.cumsum(0)) / (inside + (1 - t).cumsum(0))
        weights = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(F.relu(errors), weights))
    return torch.stack(losses).mean()


def boundary_loss(logits: Tensor, sdm: Tensor, valid: Tensor | None = None) -> Tensor:
    """Boundary loss (Kervadec et al. 2019): mean over valid pixels of sigmoid(logits) * sdm.

    `sdm` (B, 1, H, W) is `signed_distance_map` of the target: negative inside the person, positive
    outside, divided by the image diagonal. Probability outside the person raises the loss, inside
    lowers it, so the loss can be negative; its minimum is the mean of the negative part of `sdm`.
    """
    v = _valid_mask(valid, logits)
    return (torch.sigmoid(logits) * sdm.to(logits.dtype) * v).sum() / v.sum().clamp_min(1.0)


def _exact(dist: np.ndarray) -> np.ndarray:
    return np.sqrt(np.round(dist.astype(np.float64) ** 2)).astype(np.float32)


def signed_distance_map(mask: np.ndarray) -> np.ndarray:
    """Signed Euclidean distance to the mask's boundary, (H, W) bool/uint8 -> (H, W) float32.

    Kervadec's convention: outside pixels hold their distance to the nearest mask pixel (>= 1), inside
    pixels minus (their distance to the nearest background pixel - 1), so the mask's inner boundary is 0.
    Values are divided by the image diagonal sqrt(H^2 + W^2), so they lie in about [-1, 1]. An empty or
    full mask has no boundary and gives all zeros. Runs on the CPU with OpenCV (for data-loader workers).
    """
    pos = np.asarray(mask).astype(bool)
    out = np.zeros(pos.shape, np.float32)
    if not pos.any() or pos.all():
        return out
    pos_u8 = pos.astype(np.uint8)
    # cv2.distanceTransform: distance of each nonzero pixel to the nearest zero pixel (exact with PRECISE).
    # Its float32 output jitters by ~1e-5 between calls; squared distances are integers, so rounding
    # them makes the map exact and repeatable (resumed runs must reproduce the same losses).
    dist_out = _exact(cv2.distanceTransform(1 - pos_u8, cv2.DIST_L2, cv2.DIST_MASK_PRECISE))
    dist_in = _exact(cv2.distanceTransform(pos_u8, cv2.DIST_L2, cv2.DIST_MASK_PRECISE))
    out[~pos] = dist_out[~pos]
    out[pos] = -(dist_in[pos] - 1)
    return out / np.float32(math.hypot(*pos.shape))


REGION_LOSSES = {"tversky": tversky_loss, "gdl": generalized_dice_loss, "dice": dice_loss,
                 "lovasz": lovasz_hinge_loss}


class SegLoss(nn.Module):
    """Seed schedule: bce_weight * BCE + region_weight * region loss [+ boundary_weight * boundary loss].

    The training loop raises `boundary_weight` once validation IoU plateaus (personseg.train.Schedule).
    """

    def __init__(self, bce_weight: float = 0.6, region_weight: float = 0.4, region: str = "tversky",
                 boundary_weight: float = 0.0):
        super().__init__()
        if region not in REGION_LOSSES:
            raise ValueError(f"region={region!r} is unknown; use one of {sorted(REGION_LOSSES)}")
        self.bce_weight = bce_weight
        self.region_weight = region_weight
        self.region = region
        self.boundary_weight = boundary_weight

    def forward(self, logits: Tensor, target: Tensor, valid: Tensor | None = None,
                sdm: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """(B, 1, H, W) inputs -> (scalar total loss, {term name: detached scalar tensor} for logging;
        tensors, so that logging only the steps it needs does not wait for the GPU at every step).

        The boundary term is added only when `boundary_weight` > 0 and `sdm` is given.
        """
        parts = {
            "bce": bce_loss(logits, target, valid),
            self.region: REGION_LOSSES[self.region](logits, target, valid),
        }
        total = self.bce_weight * parts["bce"] + self.region_weight * parts[self.region]
        if self.boundary_weight > 0 and sdm is not None:
            parts["boundary"] = boundary_loss(logits, sdm, valid)
            total = total + self.boundary_weight * parts["boundary"]
        parts["total"] = total
        return total, {name: value.detach() for name, value in parts.items()}


def heatmap_focal_loss(logits: Tensor, target: Tensor, weight: Tensor, peak: float = 0.8) -> Tensor:
    """CornerNet / CenterNet's penalty-reduced focal loss on keypoint heatmaps (Law & Deng 2018, Zhou et al.
    2019): with p = sigmoid(logits), -(1 - p)^2 log p at the Gaussians' peaks (target >= `peak`) and
    -(1 - target)^4 p^2 log(1 - p) elsewhere, where `weight` is 1; summed and divided by the number of
    peak pixels (at least 1). Unlike a squared error it does not let sparse heatmaps settle at zero."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = (target >= peak).float() * weight
    negative = (target < peak).float() * weight
    loss = -(positive * (1 - p) ** 2 * torch.log(p) + negative * (1 - target) ** 4 * p ** 2 * torch.log(1 - p))
    return loss.sum() / positive.sum().clamp_min(1)


class HeadsLoss(nn.Module):
    """The multi-task heads' losses, each only where its labels exist (personseg.data.head_targets):

    parts: cross-entropy of the part logits over pixels with a part label (IGNORE elsewhere), weighted by
    class (`class_weights`, e.g. inverse square-root frequencies: the part classes are very unequal) and
    averaged over those pixels' weights: a batch without part labels gives exactly 0 and no gradient.
    keypoints: `heatmap_focal_loss` of the heatmap logits where `heatmap_weight` is 1.
    """

    def __init__(self, parts_weight: float = 0.5, keypoints_weight: float = 1.0, ignore_index: int = 255,
                 class_weights: list[float] | None = None):
        super().__init__()
        self.parts_weight, self.keypoints_weight, self.ignore_index = parts_weight, keypoints_weight, ignore_index
        self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32) if class_weights
                             else torch.ones(0), persistent=False)

    def forward(self, part_logits: Tensor, heatmaps: Tensor, labels: Tensor, target_heatmaps: Tensor,
                heatmap_weight: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        labelled = labels != self.ignore_index
        safe = torch.where(labelled, labels, torch.zeros_like(labels))
        ce = F.cross_entropy(part_logits, safe, reduction="none")
        w = self.class_weights.to(ce.device)[safe] if self.class_weights.numel() else torch.ones_like(ce)
        w = w * labelled
        parts = (ce * w).sum() / w.sum().clamp_min(1e-6)
        keypoints = heatmap_focal_loss(heatmaps, target_heatmaps, heatmap_weight)
        total = self.parts_weight * parts + self.keypoints_weight * keypoints
        return total, {"parts": parts.detach(), "keypoints": keypoints.detach()}
