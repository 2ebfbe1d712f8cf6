import math

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from personseg.losses import (SegLoss, bce_loss, boundary_loss, dice_loss, generalized_dice_loss,
                              lovasz_hinge_loss, signed_distance_map, tversky_loss)

REGION_LOSSES = [dice_loss, tversky_loss, generalized_dice_loss, lovasz_hinge_loss]


def logit(p) -> torch.Tensor:
    """Logits whose sigmoid is exactly the given probabilities, shaped (1, 1, H, W)."""
    p = torch.tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p))[None, None]


# The 2x2 hand example: probabilities P and a one-pixel target T.
#   P = [[0.8, 0.6],    T = [[1, 0],
#        [0.2, 0.5]]         [0, 0]]
P = [[0.8, 0.6], [0.2, 0.5]]
T = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64)
# Soft counts: TP = 0.8; FP = 0.6 + 0.2 + 0.5 = 1.3; FN = 1 - 0.8 = 0.2; sum(p) = 2.1, sum(t) = 1.


def test_bce_by_hand():
    # -(ln 0.8 + ln(1 - 0.6) + ln(1 - 0.2) + ln(1 - 0.5)) / 4
    expected = -(math.log(0.8) + math.log(0.4) + math.log(0.8) + math.log(0.5)) / 4
    assert bce_loss(logit(P), T).item() == pytest.approx(expected)


def test_dice_by_hand():
    # 1 - (2*0.8 + 1) / (2.1 + 1 + 1) = 1 - 2.6 / 4.1
    assert dice_loss(logit(P), T).item() == pytest.approx(1 - 2.6 / 4.1)
    # smooth = 0: 1 - 1.6 / 3.1
    assert dice_loss(logit(P), T, smooth=0.0).item() == pytest.approx(1 - 1.6 / 3.1)


def test_tversky_by_hand():
    # 1 - (0.8 + 1) / (0.8 + 0.3*1.3 + 0.7*0.2 + 1) = 1 - 1.8 / 2.33
    assert tversky_loss(logit(P), T).item() == pytest.approx(1 - 1.8 / 2.33)
    # alpha weights FP: with alpha=1, beta=0, smooth=0 it is 1 - TP / (TP + FP) = 1 - precision
    assert tversky_loss(logit(P), T, alpha=1.0, beta=0.0, smooth=0.0).item() == pytest.approx(1 - 0.8 / 2.1)


def test_generalized_dice_by_hand():
    # foreground: sum(t) = 1 -> w = 1;   intersection 0.8, sum(p) + sum(t) = 2.1 + 1 = 3.1
    # background: p = [0.2, 0.4, 0.8, 0.5], t = [0, 1, 1, 1]: sum(t) = 3 -> w = 1/9;
    #             intersection 0.4 + 0.8 + 0.5 = 1.7, sum(p) + sum(t) = 1.9 + 3 = 4.9
    expected = 1 - 2 * (0.8 + 1.7 / 9) / (3.1 + 4.9 / 9)
    assert generalized_dice_loss(logit(P), T).item() == pytest.approx(expected)


def test_generalized_dice_empty_foreground():
    # No person: the foreground weight (1/0^2) takes the background weight, so both weigh the same:
    # 1 - 2*(0 + sum(1 - p)) / (sum(p) + 0 + sum(1 - p) + 4) = 1 - 2*1.9 / 8
    loss = generalized_dice_loss(logit(P), torch.zeros_like(T))
    assert loss.item() == pytest.approx(1 - 3.8 / 8)


def test_lovasz_is_jaccard_loss_at_the_vertices():
    # A logit of +-1 on the right side has hinge error 0, a logit of 0 error 1: there the loss is
    # exactly 1 - IoU of the mask "right person pixels + wrongly called pixels".
    rng = np.random.default_rng(0)
    for _ in range(20):
        target = torch.from_numpy(rng.random((1, 1, 6, 7)) > 0.5).double()
        wrong = torch.from_numpy(rng.random((1, 1, 6, 7)) > 0.7)
        logits = torch.where(wrong, 0.0, target * 2 - 1)
        called = torch.where(wrong, 1 - target, target).bool()
        gt = target.bool()
        iou = (called & gt).sum() / (called | gt).sum().clamp_min(1)
        assert lovasz_hinge_loss(logits, target).item() == pytest.approx(1 - iou.item())
    # An image with no person: only the worst error counts (the IoU of any false call is 0).
    assert lovasz_hinge_loss(logit(P), torch.zeros_like(T)).item() == pytest.approx(1 + math.log(0.8 / 0.2))


def test_region_losses_average_images():
    logits, target = torch.randn(3, 1, 8, 8), (torch.rand(3, 1, 8, 8) > 0.5).float()
    for loss in REGION_LOSSES:
        singles = [loss(logits[i:i + 1], target[i:i + 1]) for i in range(3)]
        assert loss(logits, target).item() == pytest.approx(torch.stack(singles).mean().item(), rel=1e-5)


@pytest.mark.parametrize("loss", [bce_loss, *REGION_LOSSES])
def test_ignored_pixels_are_ignored(loss):
    valid = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]], dtype=torch.float64)  # ignore the 0.5 pixel
    changed = logit([[0.8, 0.6], [0.2, 0.999]])
    base = loss(logit(P), T, valid)
    assert loss(changed, T, valid).item() == pytest.approx(base.item())
    # Same as the loss over the three valid pixels alone, laid out as a 1x3 image.
    alone = loss(logit([[0.8, 0.6, 0.2]]), torch.tensor([[[[1.0, 0.0, 0.0]]]], dtype=torch.float64))
    assert base.item() == pytest.approx(alone.item())
    # And the ignored pixel gets no gradient.
    logits = logit(P).requires_grad_()
    loss(logits, T, valid.bool()).backward()
    assert logits.grad[0, 0, 1, 1] == 0


def test_ignored_target_values_do_not_matter():
    valid = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]], dtype=torch.float64)
    flipped = T.clone()
    flipped[0, 0, 1, 1] = 1.0
    for loss in [bce_loss, *REGION_LOSSES]:
        assert loss(logit(P), flipped, valid).item() == pytest.approx(loss(logit(P), T, valid).item())


def test_perfect_prediction_gives_zero():
    target = (torch.rand(2, 1, 16, 16) > 0.5).float()
    logits = (target * 2 - 1) * 30
    for loss in REGION_LOSSES:
        assert loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    # An image with no valid pixel at all adds 0, not NaN.
    for loss in REGION_LOSSES:
        assert loss(logits, target, valid=torch.zeros_like(target)).item() == 0


def test_tversky_half_half_is_dice():
    logits, target = torch.randn(2, 1, 8, 8), torch.rand(2, 1, 8, 8)  # soft targets too
    valid = torch.rand(2, 1, 8, 8) > 0.2
    d = dice_loss(logits, target, valid, smooth=0.0)
    t = tversky_loss(logits, target, valid, alpha=0.5, beta=0.5, smooth=0.0)
    assert t.item() == pytest.approx(d.item(), rel=1e-6)
    # With smoothing: (TP + s) / (TP + FP/2 + FN/2 + s) = (2TP + 2s) / (2TP + FP + FN + 2s)
    d = dice_loss(logits, target, valid, smooth=2.0)
    t = tversky_loss(logits, target, valid, alpha=0.5, beta=0.5, smooth=1.0)
    assert t.item() == pytest.approx(d.item(), rel=1e-6)


# 5x5 image with a 3x3 square in its middle. In pixels, Kervadec's signed distance is
#   sqrt2 1  1  1 sqrt2      outside: distance to the nearest square pixel
#   1     0  0  0  1         inner boundary: 0
#   1     0 -1  0  1         centre: -(distance 2 to the nearest background pixel - 1)
#   1     0  0  0  1
#   sqrt2 1  1  1 sqrt2
# and the map divides it by the diagonal sqrt(5^2 + 5^2) = sqrt(50).
SQUARE = np.zeros((5, 5), np.uint8)
SQUARE[1:4, 1:4] = 1
r2 = math.sqrt(2)
SQUARE_SDM = np.array([[r2, 1, 1, 1, r2],
                       [1, 0, 0, 0, 1],
                       [1, 0, -1, 0, 1],
                       [1, 0, 0, 0, 1],
                       [r2, 1, 1, 1, r2]]) / math.sqrt(50)


def test_signed_distance_map_square():
    sdm = signed_distance_map(SQUARE)
    assert sdm.dtype == np.float32 and sdm.shape == (5, 5)
    np.testing.assert_allclose(sdm, SQUARE_SDM, atol=1e-6)
    np.testing.assert_allclose(signed_distance_map(SQUARE.astype(bool)), SQUARE_SDM, atol=1e-6)


def test_signed_distance_map_empty_and_full():
    assert not signed_distance_map(np.zeros((4, 6), bool)).any()
    assert not signed_distance_map(np.ones((4, 6), np.uint8)).any()


def test_signed_distance_map_matches_kervadec_scipy():
    rng = np.random.default_rng(0)
    mask = rng.random((40, 50)) > 0.7
    neg = ~mask
    ref = distance_transform_edt(neg) * neg - (distance_transform_edt(mask) - 1) * mask  # Kervadec's code
    np.testing.assert_allclose(signed_distance_map(mask), ref / math.hypot(40, 50), atol=1e-5)


def test_boundary_loss_by_hand_and_sign():
    sdm = torch.from_numpy(SQUARE_SDM)[None, None]
    # p = 0.5 everywhere: 0.5 * mean(sdm) = 0.5 * (4*sqrt2 + 12 - 1) / 25 / sqrt(50)
    half = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    expected = 0.5 * (4 * r2 + 12 - 1) / 25 / math.sqrt(50)
    assert boundary_loss(half, sdm).item() == pytest.approx(expected)

    base = torch.full((1, 1, 5, 5), -5.0, dtype=torch.float64)
    outside, inside = base.clone(), base.clone()
    outside[0, 0, 0, 0] = 5.0  # probability mass outside the square raises the loss
    inside[0, 0, 2, 2] = 5.0  # inside lowers it
    assert boundary_loss(outside, sdm) > boundary_loss(base, sdm) > boundary_loss(inside, sdm)
    # Ignoring the outside pixel removes its effect.
    valid = torch.ones_like(sdm)
    valid[0, 0, 0, 0] = 0
    assert boundary_loss(outside, sdm, valid).item() == pytest.approx(boundary_loss(base, sdm, valid).item())


def test_gradients_finite():
    logits = (torch.randn(2, 1, 12, 12) * 10).requires_grad_()
    logits.data[0, 0, 0, 0] = 100.0
    logits.data[1, 0, 0, 0] = -100.0
    target = (torch.rand(2, 1, 12, 12) > 0.5).float()
    target[1] = 0  # an image with no person
    valid = torch.rand(2, 1, 12, 12) > 0.1
    sdm = torch.from_numpy(np.stack([signed_distance_map(t[0].numpy()) for t in target]))[:, None]
    losses = [bce_loss(logits, target, valid), boundary_loss(logits, sdm, valid)]
    losses += [loss(logits, target, valid) for loss in REGION_LOSSES]
    for loss in losses:
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_segloss_combines_terms():
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    sdm = torch.from_numpy(np.stack([signed_distance_map(t[0].numpy()) for t in target]))[:, None]
    crit = SegLoss()
    total, parts = crit(logits, target, sdm=sdm)  # boundary_weight 0: no boundary term
    expected = 0.6 * bce_loss(logits, target) + 0.4 * tversky_loss(logits, target)
    assert total.item() == pytest.approx(expected.item())
    assert set(parts) == {"bce", "tversky", "total"}
    assert all(v.ndim == 0 and not v.requires_grad for v in parts.values())  # detached: no GPU sync per step

    crit = SegLoss(region="gdl", boundary_weight=0.2)
    total, parts = crit(logits, target)  # no sdm: no boundary term
    assert "boundary" not in parts
    total, parts = crit(logits, target, sdm=sdm)
    expected = (0.6 * bce_loss(logits, target) + 0.4 * generalized_dice_loss(logits, target)
                + 0.2 * boundary_loss(logits, sdm))
    assert total.item() == pytest.approx(expected.item())
    assert parts["total"].item() == pytest.approx(total.item()) and set(parts) == {"bce", "gdl", "boundary", "total"}


def test_segloss_bad_region():
    with pytest.raises(ValueError, match="tversky"):
        SegLoss(region="focal")


def test_heads_loss_gives_no_part_gradient_without_part_labels():
    from personseg.losses import HeadsLoss, heatmap_focal_loss

    torch.manual_seed(0)
    part_logits = torch.randn(2, 6, 8, 8, requires_grad=True)
    heatmaps = torch.randn(2, 17, 2, 2, requires_grad=True)
    labels = torch.full((2, 8, 8), 255)
    labels[0, :4] = 3  # sample 0 has part labels in its top half only
    target = torch.zeros(2, 17, 2, 2)
    target[1, 5, 1, 1] = 1.0
    weight = torch.zeros(2, 1, 2, 2)
    weight[1] = 1  # keypoints count in sample 1 only
    total, terms = HeadsLoss(parts_weight=1.0, keypoints_weight=1.0)(part_logits, heatmaps, labels, target, weight)
    total.backward()
    assert part_logits.grad[1].abs().sum() == 0 and part_logits.grad[0, :, 4:].abs().sum() == 0
    assert part_logits.grad[0, :, :4].abs().sum() > 0
    assert heatmaps.grad[0].abs().sum() == 0 and heatmaps.grad[1].abs().sum() > 0
    expected = torch.nn.functional.cross_entropy(part_logits[0, :, :4].permute(1, 2, 0).reshape(-1, 6),
                                                 torch.full((32,), 3))
    torch.testing.assert_close(terms["parts"], expected.detach())
    # the focal loss by hand: one peak pixel, the other 67 pixels of sample 1 negatives with target 0
    p = torch.sigmoid(heatmaps[1].detach()).clamp(1e-4, 1 - 1e-4)
    peak = -(1 - p[5, 1, 1]) ** 2 * torch.log(p[5, 1, 1])
    rest = -(p ** 2 * torch.log(1 - p)).sum() + p[5, 1, 1] ** 2 * torch.log(1 - p[5, 1, 1])
    torch.testing.assert_close(terms["keypoints"], peak + rest)
    peaks = torch.eye(2)[None, None]
    right = heatmap_focal_loss(torch.where(peaks > 0, 9.0, -9.0), peaks, torch.ones(1, 1, 2, 2))
    wrong = heatmap_focal_loss(torch.where(peaks > 0, -9.0, 9.0), peaks, torch.ones(1, 1, 2, 2))
    assert right < 1e-3 and wrong > 8
    empty = HeadsLoss()(part_logits, heatmaps, torch.full((2, 8, 8), 255), target, torch.zeros(2, 1, 2, 2))[1]
    assert empty["parts"] == 0 and empty["keypoints"] == 0
    # class weights: a rare class counts more
    weighted = HeadsLoss(class_weights=[1, 1, 1, 4, 1, 1])(part_logits, heatmaps, labels, target, weight)[1]
    torch.testing.assert_close(weighted["parts"], terms["parts"])  # only class 3 is labelled: the same mean
