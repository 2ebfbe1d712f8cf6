import math

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from personseg.metrics import BinaryMetrics, per_image_stats, precision_recall_curve, video_metrics

KEYS = {"iou", "dice", "accuracy", "precision", "recall", "auroc", "boundary_f"}


def random_batch(b=4, h=24, w=32, seed=0):
    """prob (B, 1, H, W) correlated with a random target, and a valid mask with ~10% ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(b, 1, h, w, generator=g) > 0.6).float()
    prob = (0.35 * target + 0.65 * torch.rand(b, 1, h, w, generator=g)).clamp(0, 1)
    valid = torch.rand(b, 1, h, w, generator=g) > 0.1
    return prob, target, valid


def mann_whitney_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact AUROC: P(score_pos > score_neg) + P(tie) / 2, from average ranks."""
    ranks = rankdata(scores)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_counts_by_hand():
    # prob   = [[0.9, 0.2, 0.6],    pred   = [[1, 0, 1],    target = [[1, 1, 0],
    #           [0.4, 0.7, 0.1]]              [0, 1, 0]]              [0, 1, 0]]
    # tp: (0,0), (1,1) = 2; fp: (0,2) = 1; fn: (0,1) = 1; tn: (1,0), (1,2) = 2
    prob = torch.tensor([[[0.9, 0.2, 0.6], [0.4, 0.7, 0.1]]])
    target = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]])
    m = BinaryMetrics(num_bins=10)
    m.update(prob, target)
    c = m.counts()
    assert [int(c[k]) for k in ("tp", "fp", "fn", "tn")] == [2, 1, 1, 2]
    # positives have probs 0.9, 0.2, 0.7 -> bins 9, 2, 7; negatives 0.6, 0.4, 0.1 -> bins 6, 4, 1
    assert c["hist_pos"].nonzero().flatten().tolist() == [2, 7, 9]
    assert c["hist_neg"].nonzero().flatten().tolist() == [1, 4, 6]
    r = m.compute()
    assert set(r) == KEYS
    assert r["iou"] == pytest.approx(2 / 4) and r["dice"] == pytest.approx(4 / 6)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["accuracy"] == pytest.approx(4 / 6)
    # pairs (pos, neg) ordered right: 0.9 > all 3, 0.7 > all 3, 0.2 > 0.1 -> 7 of 9
    assert r["auroc"] == pytest.approx(7 / 9)

    # Ignoring the false positive at (0, 2) removes it from every count.
    m = BinaryMetrics(num_bins=10)
    m.update(prob, target, valid=torch.tensor([[[1, 1, 0], [1, 1, 1]]]).bool())
    c = m.counts()
    assert [int(c[k]) for k in ("tp", "fp", "fn", "tn")] == [2, 0, 1, 2]
    assert int(c["hist_neg"].sum()) == 2


def test_ratios_match_numpy_reference():
    prob, target, valid = random_batch()
    m = BinaryMetrics(threshold=0.4)
    m.update(prob, target, valid)
    p, t, v = prob.numpy() >= 0.4, target.numpy() >= 0.5, valid.numpy()
    tp, fp = (p & t & v).sum(), (p & ~t & v).sum()
    fn, tn = (~p & t & v).sum(), (~p & ~t & v).sum()
    r = m.compute()
    assert r["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert r["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert r["precision"] == pytest.approx(tp / (tp + fp))
    assert r["recall"] == pytest.approx(tp / (tp + fn))
    assert r["accuracy"] == pytest.approx((tp + tn) / v.sum())


def test_batch_split_invariance_and_merge():
    prob, target, valid = random_batch(b=6)
    whole = BinaryMetrics()
    whole.update(prob, target, valid)
    halves = BinaryMetrics()
    halves.update(prob[:2], target[:2], valid[:2])
    halves.update(prob[2:], target[2:], valid[2:])
    merged = BinaryMetrics()
    other = BinaryMetrics()
    merged.update(prob[:3], target[:3], valid[:3])
    other.update(prob[3:], target[3:], valid[3:])
    merged.merge(other)
    for m in (halves, merged):
        assert all(torch.equal(whole.counts()[k], c) for k, c in m.counts().items())
        assert m.compute() == whole.compute()
    with pytest.raises(ValueError, match="merge"):
        whole.merge(BinaryMetrics(num_bins=10))


def test_bhw_input_same_as_b1hw():
    prob, target, valid = random_batch()
    a, b = BinaryMetrics(), BinaryMetrics()
    a.update(prob, target, valid)
    b.update(prob[:, 0], target[:, 0], valid[:, 0])
    assert a.compute() == b.compute()
    with pytest.raises(ValueError, match="same shape"):
        a.update(prob, target[:, :, :-1])


def test_auroc_vs_mann_whitney():
    prob, target, valid = random_batch(b=2, h=64, w=64)
    scores, labels = prob[valid].numpy().astype(np.float64), target[valid].numpy() > 0.5
    exact = mann_whitney_auroc(scores, labels)
    for num_bins in (10, 100, 1000):
        m = BinaryMetrics(num_bins=num_bins)
        m.update(prob, target, valid)
        bins = np.clip((prob[valid] * num_bins).long().numpy(), 0, num_bins - 1)
        # The binned AUROC is exactly the Mann-Whitney AUROC of the bin indices (ties count 1/2)...
        assert m.compute()["auroc"] == pytest.approx(mann_whitney_auroc(bins, labels), abs=1e-12)
        # ...so within half the share of (positive, negative) pairs sharing a bin of the exact one.
        pos, neg = (np.bincount(bins[labels == t], minlength=num_bins) for t in (True, False))
        bound = 0.5 * (pos * neg).sum() / (pos.sum() * neg.sum())
        assert abs(m.compute()["auroc"] - exact) <= bound + 1e-12
        assert bound <= 1.0 / num_bins  # scores spread over the bins: about 1 / (2 * num_bins)


def test_perfect_predictor_scores_one():
    _, target, valid = random_batch()
    m = BinaryMetrics()
    m.update(target.clone(), target, valid)
    assert m.compute() == {k: 1.0 for k in KEYS}


def test_zero_denominators():
    empty = torch.zeros(1, 1, 8, 8)
    m = BinaryMetrics()
    m.update(empty, empty)  # no positive anywhere: nothing to get wrong
    r = m.compute()
    assert math.isnan(r.pop("auroc"))
    assert r == {k: 1.0 for k in KEYS - {"auroc"}}

    m = BinaryMetrics()
    pred = empty.clone()
    pred[..., 2:5, 2:5] = 1.0
    m.update(pred, empty)  # false positives only
    r = m.compute()
    assert r["iou"] == r["dice"] == r["precision"] == r["recall"] == r["boundary_f"] == 0.0
    assert r["accuracy"] == pytest.approx(55 / 64)


def test_boundary_f_identical_and_shifted():
    target = torch.zeros(1, 1, 40, 40)
    target[..., 10:30, 10:30] = 1
    m = BinaryMetrics(boundary_tolerance=2)
    m.update(target, target)
    assert m.compute()["boundary_f"] == 1.0
    # The boundary of a 20x20 square is its 76-pixel outline.
    assert int(m.counts()["bf_gt_total"]) == 76

    near = torch.roll(target, 1, dims=-1)  # 1 px away: within tolerance
    m = BinaryMetrics(boundary_tolerance=2)
    m.update(near, target)
    assert m.compute()["boundary_f"] == 1.0

    far = torch.roll(target, 5, dims=-1)  # 5 px away: the vertical edges no longer match
    m = BinaryMetrics(boundary_tolerance=2)
    m.update(far, target)
    assert 0.0 < m.compute()["boundary_f"] < 0.7


def test_boundary_ignores_image_frame():
    full = torch.ones(1, 1, 8, 8)
    m = BinaryMetrics()
    m.update(full, full)
    assert int(m.counts()["bf_gt_total"]) == 0 and m.compute()["boundary_f"] == 1.0


def test_reduce_is_noop_without_distributed():
    prob, target, valid = random_batch()
    m = BinaryMetrics()
    m.update(prob, target, valid)
    before = m.counts()
    assert m.reduce_() is m
    assert all(torch.equal(before[k], c) for k, c in m.counts().items())


def test_per_image_stats():
    prob, target, valid = random_batch(b=3)
    target[1] = 0
    prob[1] = 0  # an image with no person, predicted right
    stats = per_image_stats(prob, target, valid, threshold=0.5)
    assert len(stats) == 3 and stats[1] == {"iou": 1.0, "dice": 1.0, "precision": 1.0, "recall": 1.0}
    for i, s in enumerate(stats):
        m = BinaryMetrics()
        m.update(prob[i:i + 1], target[i:i + 1], valid[i:i + 1])
        r = m.compute()
        assert s == {k: r[k] for k in ("iou", "dice", "precision", "recall")}


def test_precision_recall_curve():
    prob, target, valid = random_batch()
    m = BinaryMetrics(num_bins=20)
    m.update(prob, target, valid)
    precision, recall, thresholds = precision_recall_curve(m)
    assert precision.shape == recall.shape == (21,) and thresholds.shape == (20,)
    assert (precision[-1], recall[-1]) == (1.0, 0.0) and recall[0] == 1.0
    assert np.all(np.diff(recall) <= 0)
    bins = np.clip((prob[valid] * 20).long().numpy(), 0, 19)
    labels = target[valid].numpy() > 0.5
    for k in (0, 7, 13, 19):
        predicted = bins >= k
        assert thresholds[k] == pytest.approx(k / 20)
        assert precision[k] == pytest.approx((predicted & labels).sum() / predicted.sum())
        assert recall[k] == pytest.approx((predicted & labels).sum() / labels.sum())


def test_video_metrics_by_hand():
    gt = [np.array([[1, 1, 0, 0]], bool)] * 3
    pred = [np.array([[1, 1, 0, 0]]), np.array([[1, 0, 0, 0]]), np.array([[1, 1, 1, 0]])]
    m = video_metrics(pred, gt)
    assert m["J"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert m["iou"] == pytest.approx(5 / 7)
    assert m["flicker"] == pytest.approx(3 / 8)  # 8 stable ground-truth pixel pairs, 3 predicted changes
    assert m["frames"] == 3
