"""Segmentation metrics computed from summed counts: `BinaryMetrics` for images, `video_metrics` for clips.

`BinaryMetrics` only adds integer counts in `update`; ratios come at the end in `compute`. Counts add
exactly across batches (`update`), across metric objects (`merge`) and across DDP ranks (`reduce_`), so
the final IoU is the dataset IoU, not a mean of batch IoUs.

Zero denominators: a ratio whose denominator is 0 is 1.0 when the prediction made no error (no false
positive and no false negative, e.g. IoU when neither prediction nor target has a positive pixel) and
0.0 otherwise. AUROC is NaN when the positive or the negative class has no pixel.
"""

from typing import Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def _bhw(x: Tensor, name: str) -> Tensor:
    """(B, 1, H, W) or (B, H, W) -> (B, H, W)."""
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 3:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; pass (B, 1, H, W) or (B, H, W)")
    return x


def _as_bhw(prob: Tensor, target: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Bring prob, target, valid to (B, H, W); `valid` to bool (all True when None)."""
    prob, target = _bhw(prob, "prob"), _bhw(target, "target")
    valid = torch.ones_like(prob, dtype=torch.bool) if valid is None else _bhw(valid, "valid").bool()
    if target.shape != prob.shape or valid.shape != prob.shape:
        raise ValueError(f"prob {tuple(prob.shape)}, target {tuple(target.shape)} and valid "
                         f"{tuple(valid.shape)} must have the same shape")
    return prob, target, valid


def _confusion(pred: Tensor, gt: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-image (TP, FP, FN, TN), each (B,) int64, from (B, H, W) bool masks."""
    def count(m: Tensor) -> Tensor:
        return (m & valid).flatten(1).sum(1)
    return count(pred & gt), count(pred & ~gt), count(~pred & gt), count(~pred & ~gt)


def _ratio(num: float, den: float, perfect: bool) -> float:
    return num / den if den > 0 else float(perfect)


def _boundary(mask: Tensor) -> Tensor:
    """(B, H, W) bool -> (B, H, W) bool: mask XOR its 3x3 erosion.

    The image frame is not a boundary: the erosion only looks at pixels inside the image.
    """
    m = mask[:, None].float()
    eroded = -F.max_pool2d(-m, 3, stride=1, padding=1)
    return mask & ~(eroded[:, 0] > 0)


def _dilate(mask: Tensor, radius: int) -> Tensor:
    """(B, H, W) bool -> (B, H, W) bool: pixels within `radius` px (chessboard distance) of the mask."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask[:, None].float(), 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0


class BinaryMetrics:
    """IoU, dice, accuracy, precision, recall, AUROC and boundary F-score from summed counts.

    Counts (int64 tensors): tp, fp, fn, tn at `threshold` (prob >= threshold is predicted positive,
    target >= 0.5 is positive); `hist_pos` / `hist_neg` (num_bins,), histograms of prob over positive /
    negative valid pixels in equal bins [k/n, (k+1)/n); boundary counts bf_pred_match / bf_pred_total
    (predicted boundary pixels within `boundary_tolerance` px of a target boundary pixel / all of
    them) and bf_gt_match / bf_gt_total (the same the other way round). Boundaries are computed on the
    whole masks and counted at valid pixels only; boundary F sums counts over all images.
    """

    def __init__(self, threshold: float = 0.5, num_bins: int = 1000, boundary_tolerance: int = 2):
        self.threshold = threshold
        self.num_bins = num_bins
        self.boundary_tolerance = boundary_tolerance
        self.reset()

    def reset(self) -> None:
        """Zero every count."""
        scalar = ["tp", "fp", "fn", "tn", "bf_pred_match", "bf_pred_total", "bf_gt_match", "bf_gt_total"]
        self._counts = {name: torch.zeros((), dtype=torch.int64) for name in scalar}
        self._counts["hist_pos"] = torch.zeros(self.num_bins, dtype=torch.int64)
        self._counts["hist_neg"] = torch.zeros(self.num_bins, dtype=torch.int64)

    def _to(self, device: torch.device) -> None:
        if self._counts["tp"].device != device:
            self._counts = {name: c.to(device) for name, c in self._counts.items()}

    @torch.no_grad()
    def update(self, prob: Tensor, target: Tensor, valid: Tensor | None = None) -> None:
        """Add the counts of a batch: prob in [0, 1], target in {0, 1}, valid bool; all (B, 1, H, W) or (B, H, W)."""
        prob, target, valid = _as_bhw(prob, target, valid)
        self._to(prob.device)
        c = self._counts
        pred, gt = prob >= self.threshold, target >= 0.5

        for name, n in zip(("tp", "fp", "fn", "tn"), _confusion(pred, gt, valid)):
            c[name] += n.sum()

        # One bincount for both histograms: index = bin + n * is_positive, ignored pixels go to 2n.
        n = self.num_bins
        bins = (prob * n).long().clamp_(0, n - 1) + n * gt.long()
        bins = torch.where(valid, bins, torch.full_like(bins, 2 * n))
        hist = torch.bincount(bins.flatten(), minlength=2 * n + 1)
        c["hist_neg"] += hist[:n]
        c["hist_pos"] += hist[n:2 * n]

        pred_b, gt_b = _boundary(pred), _boundary(gt)
        near_gt, near_pred = _dilate(gt_b, self.boundary_tolerance), _dilate(pred_b, self.boundary_tolerance)
        pred_b, gt_b = pred_b & valid, gt_b & valid
        c["bf_pred_match"] += (pred_b & near_gt).sum()
        c["bf_pred_total"] += pred_b.sum()
        c["bf_gt_match"] += (gt_b & near_pred).sum()
        c["bf_gt_total"] += gt_b.sum()

    def counts(self) -> dict[str, Tensor]:
        """A copy of every count tensor, by name."""
        return {name: c.clone() for name, c in self._counts.items()}

    def merge(self, other: "BinaryMetrics") -> "BinaryMetrics":
        """Add `other`'s counts to ours (same threshold, bins and tolerance); returns self."""
        mine = (self.threshold, self.num_bins, self.boundary_tolerance)
        theirs = (other.threshold, other.num_bins, other.boundary_tolerance)
        if mine != theirs:
            raise ValueError(f"cannot merge metrics with (threshold, num_bins, tolerance) {theirs} into {mine}")
        for name, c in self._counts.items():
            c += other._counts[name].to(c.device)
        return self

    def reduce_(self, group=None) -> "BinaryMetrics":
        """Sum every count over the ranks of `group` (all_reduce, one call); no-op without torch.distributed.

        Call it once, after the last `update` and before `compute`, on every rank.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self
        names = list(self._counts)
        device = self._counts["tp"].device
        flat = torch.cat([self._counts[name].reshape(-1) for name in names])
        if dist.get_backend(group) == "nccl":
            flat = flat.cuda()  # NCCL only reduces CUDA tensors; a rank may never have called update
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        chunks = flat.to(device).split([self._counts[name].numel() for name in names])
        for name, chunk in zip(names, chunks):
            self._counts[name] = chunk.reshape(self._counts[name].shape).clone()
        return self

    def _hist(self) -> tuple[np.ndarray, np.ndarray]:
        return (self._counts["hist_pos"].cpu().double().numpy(), self._counts["hist_neg"].cpu().double().numpy())

    def compute(self) -> dict[str, float]:
        """{iou, dice, accuracy, precision, recall, auroc, boundary_f} as floats (zero cases: module doc)."""
        c = {name: int(v) for name, v in self._counts.items() if v.dim() == 0}
        tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
        perfect = fp == 0 and fn == 0

        # Boundary F: 1 when neither mask has a boundary, 0 when only one has.
        bf_perfect = c["bf_pred_total"] == 0 and c["bf_gt_total"] == 0
        bp = _ratio(c["bf_pred_match"], c["bf_pred_total"], bf_perfect)
        br = _ratio(c["bf_gt_match"], c["bf_gt_total"], bf_perfect)
        return {
            "iou": _ratio(tp, tp + fp + fn, perfect),
            "dice": _ratio(2 * tp, 2 * tp + fp + fn, perfect),
            "accuracy": _ratio(tp + tn, tp + fp + fn + tn, perfect),
            "precision": _ratio(tp, tp + fp, perfect),
            "recall": _ratio(tp, tp + fn, perfect),
            "auroc": self._auroc(),
            "boundary_f": _ratio(2 * bp * br, bp + br, bf_perfect),
        }

    def _auroc(self) -> float:
        """Area under the ROC curve through the thresholds at the bin edges (trapezoid rule).

        This is the exact AUROC of the binned scores (pairs sharing a bin count 1/2): within half the
        share of (positive, negative) pairs that share a bin of the AUROC of the raw probabilities.
        """
        pos, neg = self._hist()
        if pos.sum() == 0 or neg.sum() == 0:
            return float("nan")
        # Threshold at edge k/n predicts positive for bins >= k; walk k = n, n-1, ..., 0.
        tpr = np.concatenate([[0.0], np.cumsum(pos[::-1])]) / pos.sum()
        fpr = np.concatenate([[0.0], np.cumsum(neg[::-1])]) / neg.sum()
        return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


@torch.no_grad()
def per_image_stats(prob: Tensor, target: Tensor, valid: Tensor | None = None,
                    threshold: float = 0.5) -> list[dict[str, float]]:
    """One {iou, dice, precision, recall} dict per image; inputs (B, 1, H, W) or (B, H, W) as in `update`."""
    prob, target, valid = _as_bhw(prob, target, valid)
    counts = torch.stack(_confusion(prob >= threshold, target >= 0.5, valid), 1).tolist()
    stats = []
    for tp, fp, fn, _ in counts:
        perfect = fp == 0 and fn == 0
        stats.append({
            "iou": _ratio(tp, tp + fp + fn, perfect),
            "dice": _ratio(2 * tp, 2 * tp + fp + fn, perfect),
            "precision": _ratio(tp, tp + fp, perfect),
            "recall": _ratio(tp, tp + fn, perfect),
        })
    return stats


def precision_recall_curve(metrics: BinaryMetrics) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) from the histograms, like sklearn's precision_recall_curve.

    thresholds (n,) are the bin edges k/n, k = 0..n-1, increasing; a pixel counts as positive at k/n
    when its bin index is >= k. precision and recall (n + 1,) end with the point (1, 0) that has no
    threshold. Precision is 1 where nothing is predicted positive; recall is 1 when there is no
    positive pixel at all (sklearn's choices).
    """
    pos, neg = metrics._hist()
    tp = np.cumsum(pos[::-1])[::-1]  # tp[k]: positive pixels in bins >= k
    fp = np.cumsum(neg[::-1])[::-1]
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.ones_like(tp), where=predicted > 0)
    recall = tp / pos.sum() if pos.sum() > 0 else np.ones_like(tp)
    thresholds = np.arange(metrics.num_bins) / metrics.num_bins
    return np.append(precision, 1.0), np.append(recall, 0.0), thresholds


def video_metrics(pred_masks: Iterable[np.ndarray], gt_masks: Iterable[np.ndarray]) -> dict[str, float]:
    """Temporal quality of a clip's masks ((H, W) bool or 0/255 each, same length and size).

    J: the mean over frames of the IoU (DAVIS region similarity; a frame where both masks are empty
    counts 1). iou: the IoU of the summed counts. flicker: of the pixels whose ground truth keeps its
    label from one frame to the next, the share whose predicted label changes (0 for a steady
    prediction; counts summed over the clip, divided once). Streams: one frame pair in memory.
    """
    ious: list[float] = []
    tp = union = changed = stable = 0
    prev_pred = prev_gt = None
    for pred, gt in zip(pred_masks, gt_masks, strict=True):
        pred, gt = np.asarray(pred) > 0, np.asarray(gt) > 0
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
        inter, uni = int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))
        ious.append(inter / uni if uni else 1.0)
        tp, union = tp + inter, union + uni
        if prev_pred is not None:
            same_gt = prev_gt == gt
            stable += int(np.count_nonzero(same_gt))
            changed += int(np.count_nonzero(same_gt & (prev_pred != pred)))
        prev_pred, prev_gt = pred, gt
    return {"J": float(np.mean(ious)) if ious else float("nan"), "iou": tp / union if union else 1.0,
            "flicker": changed / stable if stable else 0.0, "frames": len(ious)}
