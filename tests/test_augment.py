import time
import warnings

import albumentations as A
import cv2
import numpy as np
import pytest

from personseg.augment import (PAD_COLOR, BackgroundBlur, PersonCrop, SigmoidContrast, apply_augment,
                               build_augment, letterbox)

SIZE = (160, 96)


def pattern(h=240, w=320, seed=0):
    """An image whose red channel *is* its mask (255 = person), with textured other channels, and
    `valid` all ones. Shapes are large blobs, so only their edges can suffer from interpolation."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(4):
        cx, cy = rng.integers(w), rng.integers(h)
        cv2.ellipse(mask, (int(cx), int(cy)), (int(rng.integers(15, 60)), int(rng.integers(25, 90))),
                    float(rng.uniform(0, 180)), 0, 360, 1, -1)
    cv2.rectangle(mask, (w // 3, h // 4), (w // 3 + 30, h - 20), 1, -1)  # an asymmetric bar
    yy, xx = np.mgrid[:h, :w]
    image = np.dstack([mask * 255, (xx * 255 // w), (yy * 255 // h)]).astype(np.uint8)
    return image, mask, np.ones_like(mask)


def geometric(intensity):
    """The geometric transforms of a shipped pipeline (the ones that must move image and masks together);
    CoarseDropout is a DualTransform too, but draws its occluders on the image only."""
    return A.Compose([t for t in build_augment(intensity, SIZE).transforms
                      if isinstance(t, A.DualTransform) and not isinstance(t, A.CoarseDropout)])


@pytest.mark.parametrize("intensity", ["mild", "strong"])
def test_pipelines_build_without_warnings(intensity):
    # Albumentations only warns about a wrong argument name (2.x renamed many): make that an error.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipeline = build_augment(intensity, SIZE)
        image, mask, valid = pattern()
        for seed in range(20):
            out = apply_augment(pipeline, image, mask, [valid], seed)
    assert out["image"].shape == (SIZE[1], SIZE[0], 3) and out["image"].dtype == np.uint8
    assert out["mask"].shape == out["masks"][0].shape == (SIZE[1], SIZE[0])


@pytest.mark.parametrize("intensity", ["mild", "strong"])
def test_geometry_keeps_image_and_mask_aligned(intensity):
    pipeline = geometric(intensity)
    assert {type(t) for t in pipeline.transforms} >= {PersonCrop, A.HorizontalFlip, A.Rotate}
    for t in pipeline.transforms:  # force every transform on, so flips and rotations do happen
        t.p = 1.0
    for seed in range(40):
        image, mask, valid = pattern(seed=seed)
        out = apply_augment(pipeline, image, mask, [valid], seed)
        inside = out["masks"][0] > 0  # pixels that come from the picture
        from_red = out["image"][..., 0] > 127
        disagree = (from_red != (out["mask"] > 0)) & inside
        # interpolation may blur a one-pixel rim along edges, nothing more
        kernel = np.ones((3, 3), np.uint8)
        edges = cv2.dilate(out["mask"], kernel) != cv2.erode(out["mask"], kernel)  # within 1 px of an edge
        assert not (disagree & ~edges).any(), f"seed {seed}: mask and image disagree away from edges"
        assert (out["mask"][~inside] == 0).all()


def test_occluders_leave_the_masks_alone():
    dropout = A.Compose([t for t in build_augment("strong", SIZE).transforms if isinstance(t, A.CoarseDropout)])
    dropout.transforms[0].p = 1.0
    image, mask, valid = pattern(h=SIZE[1], w=SIZE[0])
    out = apply_augment(dropout, image, mask, [valid], 0)
    assert not (out["image"] == image).all()
    assert (out["mask"] == mask).all() and (out["masks"][0] == valid).all()


def test_flip_really_flips_both():
    image, mask, valid = pattern()
    out = apply_augment(A.Compose([A.HorizontalFlip(p=1)]), image, mask, [valid], 0)
    assert (out["mask"] == mask[:, ::-1]).all() and (out["image"] == image[:, ::-1]).all()


def test_same_seed_same_sample_other_seed_other_sample():
    pipeline = build_augment("strong", SIZE)
    image, mask, valid = pattern()
    a, b = (apply_augment(pipeline, image, mask, [valid], 7) for _ in range(2))
    c = apply_augment(pipeline, image, mask, [valid], 8)
    assert (a["image"] == b["image"]).all() and (a["mask"] == b["mask"]).all()
    assert not (a["image"] == c["image"]).all()


def test_far_zoom_makes_people_small_on_a_padded_canvas():
    image, mask, valid = pattern()
    crop = A.Compose([PersonCrop(SIZE, far_prob=1.0, far_range=(4.0, 4.0), jitter=0.0)])
    out = apply_augment(crop, image, mask, [valid], 0)
    rows = np.flatnonzero(out["mask"].any(1))
    box_rows = np.flatnonzero(mask.any(1))
    # the person box fills about 1/4 of the window height
    assert rows[-1] - rows[0] + 1 < 0.35 * SIZE[1] and box_rows[-1] - box_rows[0] > 0.5 * image.shape[0]
    pad = out["masks"][0] == 0
    assert pad.mean() > 0.5 and (out["image"][pad] == PAD_COLOR).all()


def test_letterbox_centres_and_marks_padding_invalid():
    image, mask, valid = pattern(h=200, w=100)  # tall picture into a wide box: pads left and right
    img, m, (v,) = letterbox(image, mask, [valid], SIZE)
    assert img.shape == (SIZE[1], SIZE[0], 3)
    cols = np.flatnonzero(v.any(0))
    assert cols[0] > 0 and SIZE[0] - 1 - cols[-1] in (cols[0] - 1, cols[0], cols[0] + 1)  # centred
    assert ((img[..., 0] > 127) == (m > 0))[v > 0].mean() > 0.98 and (m[v == 0] == 0).all()


def test_sigmoid_contrast_is_an_s_curve_fixing_black_and_white():
    ramp = np.tile(np.arange(256, dtype=np.uint8), (4, 1))[..., None].repeat(3, 2)
    out = SigmoidContrast(p=1).apply(ramp, gain=8.0, cutoff=0.5)
    curve = out[0, :, 0].astype(int)
    assert curve[0] == 0 and curve[255] == 255 and (np.diff(curve) >= 0).all()
    assert curve[64] < 64 and curve[192] > 192  # more contrast around the middle


def test_background_blur_keeps_the_person_sharp():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)
    mask = np.zeros((96, 160), np.uint8)
    mask[20:80, 50:110] = 1
    out = BackgroundBlur(p=1).apply(image, person=mask, sigma=4.0)
    core = cv2.erode(mask, np.ones((15, 15), np.uint8)) > 0
    assert np.abs(out[core].astype(int) - image[core]).max() <= 1
    assert np.abs(out[mask == 0].astype(int) - image[mask == 0]).mean() > 20  # noise is blurred away


def test_augmentation_is_cheap():
    image, mask, valid = pattern(h=800, w=600)  # a portrait-sized picture
    pipeline = build_augment("strong", (320, 180))
    apply_augment(pipeline, image, mask, [valid], 0)
    start = time.perf_counter()
    for seed in range(20):
        apply_augment(pipeline, image, mask, [valid], seed)
    per_image = (time.perf_counter() - start) / 20
    assert per_image < 0.03, f"{per_image * 1000:.1f} ms per image"  # ~2-5 ms on an idle core


def test_keypoints_move_with_the_picture_and_a_mirror_is_reported():
    """Keypoints through PersonCrop, flip and rotation land where a dot drawn at them lands."""
    import cv2
    from personseg.augment import apply_augment, build_augment

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    person = np.zeros((240, 320), np.uint8)
    person[40:200, 100:220] = 1
    points = np.array([[120.0, 60.0], [200.0, 180.0], [160.0, 100.0]])
    pipeline = build_augment("strong", (160, 96))
    flips = set()
    for seed in range(12):
        dots = []
        for x, y in points:
            dot = np.zeros_like(person)
            cv2.circle(dot, (int(x), int(y)), 4, 1, -1)
            dots.append(dot)
        out = apply_augment(pipeline, image, person, dots, seed, keypoints=points)
        flips.add(out["flipped"])
        for (x, y), dot in zip(out["keypoints"], out["masks"]):
            ys, xs = np.nonzero(dot)
            if len(xs) < 3 or xs.min() == 0 or ys.min() == 0 or xs.max() == 159 or ys.max() == 95:
                continue  # cropped away or cut by the border: its centroid moves
            assert abs(xs.mean() - x) < 1.5 and abs(ys.mean() - y) < 1.5, (seed, x, y, xs.mean(), ys.mean())
    assert flips == {True, False}
