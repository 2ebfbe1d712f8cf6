"""Matting errors against hand-computed values on tiny arrays, and foreground colour estimation on
synthetic and real composites (against the known colour and against pymatting)."""
import cv2
import numpy as np
import pytest

from personseg import matting


def test_sad_and_mse_by_hand():
    pred = np.array([[0, 0.5], [1, 1]])
    target = np.array([[0, 1], [1, 0]])
    region = np.array([[True, True], [True, False]])
    assert matting.sad(pred, target) == pytest.approx(1.5 / 1000)
    assert matting.sad(pred, target, region) == pytest.approx(0.5 / 1000)
    assert matting.mse(pred, target) == pytest.approx((0.25 + 1) / 4)
    assert matting.mse(pred, target, region) == pytest.approx(0.25 / 3)
    assert matting.mse(pred, target, np.zeros((2, 2), bool)) == 0.0


def test_gradient_kernel_is_gaussgradient():
    h = matting.gaussian_gradient_kernel(1.4)
    # half size ceil(1.4 sqrt(-2 ln(sqrt(2 pi) 1.4 0.01))) = ceil(3.62) = 4
    assert h.shape == (9, 9)
    assert np.sum(h ** 2) == pytest.approx(1.0)
    np.testing.assert_allclose(h, -h[:, ::-1])  # odd in x
    np.testing.assert_allclose(h, h[::-1])  # even in y
    g = np.exp(-np.arange(-4, 5) ** 2 / (2 * 1.4 ** 2))
    raw = g[:, None] * (-np.arange(-4, 5) * g)[None]  # gauss(i) * dgauss(j), constants cancel in the norm
    np.testing.assert_allclose(h, raw / np.sqrt((raw ** 2).sum()))


def test_gradient_error_of_a_step_by_hand():
    """A vertical step against a flat target: rows are equal, so the y gradient is 0 and each column's x
    gradient is the convolution written out as a sum of kernel columns."""
    H, W, x0 = 6, 16, 8
    pred = np.zeros((H, W))
    pred[:, x0:] = 1
    target = np.zeros((H, W))
    h = matting.gaussian_gradient_kernel(1.4)
    half = h.shape[0] // 2
    column = h.sum(0)  # the rows are equal, so only the kernel's column sums act
    gx = np.array([sum(column[j] for j in range(2 * half + 1) if x - (j - half) >= x0) for x in range(W)])
    # replicate borders keep the sums right at the edges too: a step away from both borders
    expected = H * np.sum(gx ** 2) / 1000
    assert matting.gradient_error(pred, target) == pytest.approx(expected, rel=1e-9)
    assert matting.gradient_error(pred, pred) == 0
    region = np.zeros((H, W), bool)
    region[:, x0] = True
    assert matting.gradient_error(pred, target, region) == pytest.approx(H * gx[x0] ** 2 / 1000, rel=1e-9)


def test_gradient_error_matches_scipy_reference():
    """The Python port of the MATLAB code (DIM, GCA) convolves with scipy.ndimage, mode 'nearest'."""
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    pred, target = rng.random((11, 13)), rng.random((11, 13))
    hx = matting.gaussian_gradient_kernel(1.4)

    def amp(a):
        return np.hypot(ndimage.convolve(a, hx, mode="nearest"), ndimage.convolve(a, hx.T, mode="nearest"))

    expected = np.sum((amp(pred) - amp(target)) ** 2) / 1000
    assert matting.gradient_error(pred, target) == pytest.approx(expected, rel=1e-9)


def test_connectivity_error_by_hand():
    """pred [1, 1, .5, 0, 1], target [1, 1, 1, 0, 1]: up to t = .5 the largest common region is pixels
    0-2, so pixels 3 and 4 get level 0; from t = .6 it is pixels 0-1, so pixel 2 gets .5; 0 and 1 keep 1.
    d = alpha - level: pred [0, 0, 0, 0, 1], target [0, 0, .5, 0, 1]; phi = 1 - d [d >= .15] differs only
    at pixel 2: |1 - .5| = .5."""
    pred = np.array([[1, 1, 0.5, 0, 1]])
    target = np.array([[1, 1, 1, 0, 1]])
    assert matting.connectivity_error(pred, target) == pytest.approx(0.5 / 1000)
    assert matting.connectivity_error(pred, target, np.array([[1, 1, 0, 1, 1]], bool)) == 0
    assert matting.connectivity_error(target, target) == 0
    # below the 0.15 dead zone a difference of d does not count
    assert matting.connectivity_error(np.array([[1, 1, 0.1]]), np.array([[1, 1, 0.0]])) == 0


def test_matting_errors_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="one size"):
        matting.matting_errors(np.zeros((2, 3)), np.zeros((3, 2)))
    errors = matting.matting_errors(np.zeros((4, 4)), np.zeros((4, 4)))
    assert errors == {"sad": 0, "mse": 0, "grad": 0, "conn": 0}


def synthetic_composite(h=90, w=120):
    """A flat-coloured person with a 12-pixel soft edge over a textured background: (I, F, alpha)."""
    x = np.arange(w, dtype=np.float32)
    alpha = np.clip((x - 54) / 12, 0, 1)[None].repeat(h, 0)
    fg = np.broadcast_to(np.array([200, 40, 60], np.float32), (h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = np.dstack([30 + xx, 150 + 0.5 * yy, 220 - xx]).clip(0, 255)
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    return np.round(image).astype(np.uint8), fg, alpha


def test_foreground_recovers_known_colour_in_the_edge_band():
    image, fg, alpha = synthetic_composite()
    band = (alpha > 0.05) & (alpha < 0.95)
    estimate = matting.estimate_foreground(image, alpha).astype(np.float32)
    naive = np.abs(image.astype(np.float32) - fg)[band].mean()
    error = np.abs(estimate - fg)[band].mean()
    assert naive > 40  # the photo's own colour carries the old background there
    assert error < 6, f"mean colour error {error:.2f} in the edge band"
    assert np.array_equal(estimate[alpha == 1], image[alpha == 1])  # opaque pixels keep their colour


def real_alpha_composite(data_dir, index):
    """A real cut-out's soft alpha compositing one background photo (as a known foreground F) over another:
    (I, F, alpha). The cut-outs' own colours cannot be the truth: their soft pixels carry their old
    background."""
    def photo(i, w, h):
        path = sorted((data_dir / "composites/backgrounds").iterdir())[i]
        return cv2.cvtColor(cv2.resize(cv2.imread(str(path)), (w, h), interpolation=cv2.INTER_AREA),
                            cv2.COLOR_BGR2RGB).astype(np.float32)

    path = sorted((data_dir / "composites/foregrounds").iterdir())[index]
    alpha = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., 3].astype(np.float32) / 255
    h, w = alpha.shape
    fg, bg = photo(index, w, h), photo(index + 10, w, h)
    image = np.round(alpha[..., None] * fg + (1 - alpha[..., None]) * bg).astype(np.uint8)
    return image, fg, alpha


@pytest.mark.parametrize("index", [9, 39])  # validation cut-outs
def test_foreground_agrees_with_pymatting(data_dir, index):
    """With a real soft alpha, Blur-Fusion's colour in the soft band is about as close to the truth as
    pymatting's estimate_foreground_ml (Germer et al.; measured 13.7 vs 13.6 and 10.6 vs 8.1 of 255 where
    the photo's colour is 30 and 52 off), and near pymatting's own answer."""
    ml = pytest.importorskip("pymatting").estimate_foreground_ml
    image, fg, alpha = real_alpha_composite(data_dir, index)
    band = (alpha > 0.1) & (alpha < 0.9)
    assert band.sum() > 500
    ours = matting.estimate_foreground(image, alpha).astype(np.float32)
    theirs = ml(image / 255.0, alpha.astype(np.float64)) * 255
    err = {name: np.abs(est - fg)[band].mean() for name, est in
           (("photo", image.astype(np.float32)), ("blur_fusion", ours), ("pymatting", theirs))}
    assert err["blur_fusion"] < 0.6 * err["photo"], err
    assert err["pymatting"] < 0.6 * err["photo"], err
    assert err["blur_fusion"] < 1.5 * err["pymatting"] + 2, err
    assert np.abs(ours - theirs)[band].mean() < 0.4 * err["photo"], err


def test_dtssd_and_clip_errors_by_hand():
    pred = np.array([[[0, 0]], [[0.5, 0]], [[0.5, 1]]])  # (T=3, H=1, W=2)
    target = np.array([[[0, 0]], [[1, 0]], [[1, 0]]])
    # changes pred - target: t=1 (0.5 - 1, 0) -> sqrt((0.25 + 0) / 2); t=2 (0, 1 - 0) -> sqrt((0 + 1) / 2)
    expected = (np.sqrt(0.125) + np.sqrt(0.5)) / 2
    assert matting.dtssd(pred, target) == pytest.approx(expected)
    errors = matting.clip_errors(pred, target)
    assert errors["dtssd"] == pytest.approx(expected)
    assert errors["mse"] == pytest.approx((0.25 + 0.25 + 1) / 6)
    assert errors["sad"] == pytest.approx((0 + 0.5 + 1.5) / 3 / 1000)
    # an error that stays put costs nothing in time; the truth a frame late does
    assert matting.dtssd(target + 0.1, target) == pytest.approx(0, abs=1e-12)
    assert matting.dtssd(target * 0.5, target) == pytest.approx((np.sqrt(0.125) + 0) / 2)
    late = np.concatenate([target[:1], target[:-1]])
    assert matting.dtssd(late, target) == pytest.approx(np.sqrt(0.5))  # changes -1 then +1 at one of 2 pixels
    with pytest.raises(ValueError, match="T >= 2"):
        matting.dtssd(pred[:1], target[:1])
    with pytest.raises(ValueError, match="one size"):
        matting.clip_errors(pred, target[:, :, :1])
