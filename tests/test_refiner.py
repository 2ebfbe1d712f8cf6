"""The deep guided filter: its exact special case (the analytic filter), gradients, ONNX export of the
segmenter and the refiner together at two input sizes, the predictor's refine modes, and its training data."""
import numpy as np
import pytest
import torch

import personseg
from personseg.checkpoint import load_checkpoint
from personseg.export import export_onnx
from personseg.guided_filter import default_radius, refine_alpha
from personseg.guided_filter_torch import DeepGuidedFilterRefiner, fast_guided_filter
from personseg.predict import Predictor
from personseg.refiner import DeepRefiner, refine_mode
from personseg.refiner_train import MattingScenes, band_side, band_weight, crop_loss, export_refiner


def photo_and_prob(seed=0, H=45, W=77, h=15, w=26):
    """A blocky random photo and a smooth low-resolution probability."""
    rng = np.random.default_rng(seed)
    rgb = np.kron(rng.integers(0, 256, (-(-H // 5), -(-W // 7), 3)), np.ones((5, 7, 1))).astype(np.uint8)[:H, :W]
    prob = (0.5 + 0.5 * np.sin(np.arange(h)[:, None] / 3 + np.arange(w)[None] / 4)).astype(np.float32)
    return rgb, prob


def as_tensors(rgb, prob):
    return (torch.from_numpy(rgb).permute(2, 0, 1)[None].double() / 255, torch.from_numpy(prob)[None, None].double())


def randomize(refiner: DeepGuidedFilterRefiner, seed=0, scale=0.05) -> DeepGuidedFilterRefiner:
    """A refiner whose last layer is not zero (an untrained one is exactly the analytic filter)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        last = refiner.net.body[-1]
        last.weight.normal_(0, scale)
        last.bias.normal_(0, scale)
    return refiner


def test_zero_correction_is_the_analytic_guided_filter():
    rgb, prob = photo_and_prob()
    guide, src = as_tensors(rgb, prob)
    refiner = DeepGuidedFilterRefiner()
    with torch.no_grad():
        deep = refiner(guide.float(), src.float())[0, 0].double()
        analytic = fast_guided_filter(guide, src, default_radius(*prob.shape), 1e-5)[0, 0].clamp(0, 1)
        assert torch.allclose(deep, analytic, atol=2e-5)
        np.testing.assert_allclose(deep.numpy(), refine_alpha(rgb, prob), atol=2e-4)
        assert not torch.allclose(randomize(refiner)(guide.float(), src.float())[0, 0].double(), analytic, atol=1e-2)


def test_gradient_reaches_every_parameter():
    rgb, prob = photo_and_prob(1)
    guide, src = as_tensors(rgb, prob)
    refiner = randomize(DeepGuidedFilterRefiner(hidden=8))
    target = (torch.rand(1, 1, *rgb.shape[:2]) > 0.5).float()
    (refiner(guide.float(), src.float()) - target).abs().mean().backward()
    for name, p in refiner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kwargs", [{}, {"scale": 2, "squash": "log1p"}])
def test_segmenter_and_refiner_onnx_match_torch_at_two_sizes(tiny_checkpoint, tmp_path, kwargs):
    """The ONNX pipeline (segmenter file on ORT, refiner file on ORT + numpy full-resolution step) gives
    the alpha of the torch pipeline (checkpoint + DeepGuidedFilterRefiner) at two model input sizes (one
    odd), the net at the model's resolution or at half of it."""
    model, info = load_checkpoint(tiny_checkpoint)
    export_onnx(model, info, tmp_path / "m.onnx", check=False)
    refiner = randomize(DeepGuidedFilterRefiner(hidden=8, **kwargs), scale=0.2)
    export_refiner(refiner, tmp_path / "m_refiner.onnx", tmp_path / "m.onnx")
    onnx_predictor = personseg.load(str(tmp_path / "m.onnx"), refine="guided")
    onnx_predictor.refiner, onnx_predictor.refine = DeepRefiner(tmp_path / "m_refiner.onnx", threads=1), "deep"
    torch_predictor = Predictor.from_checkpoint(tiny_checkpoint, refine="none")
    sizes = set()
    for H, W in ((240, 320), (301, 187)):
        rgb, _ = photo_and_prob(2, H, W)
        size = torch_predictor.spec.model_size(H, W)
        sizes.add(size)
        prob, _, _ = torch_predictor._forward([rgb], size)
        with torch.no_grad():
            expected = refiner(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255,
                               torch.from_numpy(prob[:1])[None])[0, 0].numpy()
        alpha = onnx_predictor.predict(rgb)
        assert alpha.shape == (H, W)
        assert np.abs(alpha - expected).max() < 2e-3
        assert np.abs(alpha - personseg.load(str(tmp_path / "m.onnx"), refine="guided").predict(rgb)).max() > 1e-2
    assert len(sizes) == 2


def test_refine_modes(tmp_path):
    assert [refine_mode(r) for r in (True, False, "deep", "guided")] == ["auto", "none", "deep", "guided"]
    with pytest.raises(ValueError, match="choose one of"):
        refine_mode("sharp")
    with pytest.raises(ValueError, match="needs a shipped model"):
        personseg.load(str(tmp_path / "x.onnx"), refine="deep")
    bad = tmp_path / "bad_refiner.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="not a readable ONNX refiner"):
        DeepRefiner(bad)


def half_mask() -> tuple[np.ndarray, np.ndarray]:
    """A (20, 30) mask of its right half and a valid map without its first row."""
    mask = np.zeros((20, 30), np.float32)
    mask[:, 15:] = 1
    valid = np.ones_like(mask)
    valid[0] = 0
    return mask, valid


def test_band_weight_leaves_out_the_edge_band():
    mask, valid = half_mask()
    w = band_weight(mask, valid, band=3)
    assert (w[1:, :11] == 1).all() and (w[1:, 19:] == 1).all()  # more than 3 pixels from the edge
    assert (w[:, 13:17] == 0).all() and (w[0] == 0).all()


def test_band_side_marks_the_band_by_the_masks_side():
    mask, valid = half_mask()
    side = band_side(mask, valid, band=3)
    band = (band_weight(mask, valid, band=3) == 0) & (valid > 0)
    assert np.array_equal(side != 0, band)
    assert (side[band & (mask > 0)] == 1).all() and (side[band & (mask == 0)] == -1).all()
    assert (side[0] == 0).all()  # not valid: no side asked


def test_band_hinge_charges_only_the_wrong_side_of_the_threshold():
    """crop_loss on a binary-mask sample: in the edge band any alpha on the mask's side of the threshold
    costs nothing (soft is free), a pixel across it costs its distance to the threshold."""
    from personseg.guided_filter import area_downsample, coefficients

    rgb, prob = photo_and_prob(4, 40, 40, 20, 20)
    mask = np.zeros((40, 40), np.float32)
    mask[:, 20:] = 1
    valid = np.ones_like(mask)
    guide = area_downsample(rgb, *prob.shape)
    s = {"image": rgb, "prob": prob, "target": mask, "weight": np.zeros_like(mask), "soft": False,
         "side": band_side(mask, valid), "edges": np.zeros((0, 2), int),
         "guide_lr": torch.from_numpy(guide.transpose(2, 0, 1)[None].astype(np.float32)),
         "coef": torch.from_numpy(coefficients(guide, prob.astype(np.float64), 1, 1e-5)[None].astype(np.float32))}
    refiner = DeepGuidedFilterRefiner(hidden=4)
    with torch.no_grad():  # constant coefficients: alpha = b everywhere (A = 0)
        refiner.net.body[-1].bias.copy_(torch.tensor([0, 0, 0, 0.6]))
    const = torch.zeros_like(s["coef"])
    s["coef"] = const
    rng = np.random.default_rng(0)
    # weight 0 everywhere: only the hinge speaks. alpha 0.6 >= threshold 0.55 inside, 0.05 above it outside
    loss = crop_loss(refiner, s, rng, size=20, threshold=0.55, side_weight=1)
    band_outside = (s["side"] == -1).sum()
    assert loss.item() == pytest.approx(0.05 * band_outside / np.abs(s["side"]).sum(), rel=1e-4)
    assert crop_loss(refiner, s, rng, size=20, threshold=0.55, side_weight=0).item() == 0
    assert crop_loss(refiner, s, rng, size=20, threshold=0.6, side_weight=1).item() == pytest.approx(0, abs=1e-6)


def test_matting_scenes_are_deterministic_with_soft_alpha_and_split(data_dir):
    train, val = MattingScenes(data_dir, "train"), MattingScenes(data_dir, "val")
    assert not set(train.foregrounds) & set(val.foregrounds) and not set(train.backgrounds) & set(val.backgrounds)
    image, alpha = val.render(7)
    again, alpha2 = val.render(7)
    assert np.array_equal(image, again) and np.array_equal(alpha, alpha2)
    assert 480 <= max(image.shape[:2]) <= 960 and alpha.shape == image.shape[:2]
    assert ((alpha > 0.05) & (alpha < 0.95)).sum() > 100 and alpha.max() > 0.99


def test_matting_clips_move_smoothly_and_are_deterministic(data_dir):
    """MattingScenes.clip: the dtSSD clips of benchmarks/matting.py. The cut-out moves a little every frame
    (sub-pixel steps, eased), never jumps, and the same seed gives the same clip."""
    val = MattingScenes(data_dir, "val")
    images, alphas = val.clip(3, frames=8)
    again, alphas2 = val.clip(3, frames=8)
    assert np.array_equal(images, again) and np.array_equal(alphas, alphas2)
    assert images.shape[:3] == alphas.shape and images.shape[0] == 8 and images.dtype == np.uint8
    assert ((alphas > 0.05) & (alphas < 0.95)).sum(axis=(1, 2)).min() > 100 and alphas.max() > 0.99
    ys, xs = np.mgrid[:alphas.shape[1], :alphas.shape[2]]
    area = alphas.sum(axis=(1, 2))
    centre = np.stack([(alphas * xs).sum(axis=(1, 2)) / area, (alphas * ys).sum(axis=(1, 2)) / area], 1)
    steps = np.linalg.norm(np.diff(centre, axis=0), axis=1)
    assert steps.max() < 0.05 * max(alphas.shape[1:]) and np.linalg.norm(centre[-1] - centre[0]) > 2
    assert np.abs(np.diff(area)).max() < 0.1 * area.max()
    assert not np.array_equal(val.clip(4, frames=2)[1], alphas[:2])


@pytest.mark.parametrize("scale", [1, 2])
def test_training_crops_equal_the_whole_picture(scale):
    """crop_alpha (training's edge-centred crops) gives the whole-picture alpha on its pixels, at the
    borders too (bilinear source rows clamped as the resize clamps them), on odd-sized pictures with the
    net at half resolution too (its 2x2 grid kept)."""
    from personseg.refiner_train import crop_alpha, predict_alpha
    from personseg.guided_filter import area_downsample, coefficients

    rgb, prob = photo_and_prob(3, 61, 97, 23, 37)
    guide = area_downsample(rgb, *prob.shape)
    s = {"image": rgb, "prob": prob,
         "guide_lr": torch.from_numpy(guide.transpose(2, 0, 1)[None].astype(np.float32)),
         "coef": torch.from_numpy(coefficients(guide, prob.astype(np.float64), 1, 1e-5)[None].astype(np.float32))}
    refiner = randomize(DeepGuidedFilterRefiner(hidden=8, scale=scale), scale=0.2)
    with torch.no_grad():
        full = predict_alpha(refiner, s)
        for y, x in ((0, 0), (13, 27), (5, 11), (14, 26)):
            crop, (Y0, Y1, X0, X1) = crop_alpha(refiner, s, y, x, size=10)
            assert crop.shape == (Y1 - Y0, X1 - X0) and crop.numel() > 0
            assert torch.allclose(crop, full[Y0:Y1, X0:X1], atol=1e-5)


def test_shipped_refiner_is_opt_in():
    """accurate ships a refiner trained on its own ONNX file; "auto" (the default) runs the analytic filter
    (refiner.AUTO, by the measurements), refine="deep" the trained one, which keeps the astronaut."""
    from skimage import data

    from personseg.refiner import AUTO

    rgb = data.astronaut()
    default, deep = personseg.load("accurate"), personseg.load("accurate", refine="deep")
    assert (default.refiner is None) == (AUTO == "guided")
    assert deep.refiner is not None and deep.refiner.info["model"] == "accurate.onnx"
    a, b = default.predict(rgb), deep.predict(rgb)
    assert a.shape == b.shape == rgb.shape[:2] and np.abs(a - b).max() > 1e-2
    mask = b >= 0.5  # the shipped-model contract of tests/test_shipped_models.py (it also shrinks the
    assert mask[80:160, 180:260].mean() > 0.9 and mask[200:450, 100:300].mean() > 0.9  # mask: 46% vs 53%)
    assert mask[0:250, 380:500].mean() < 0.1
