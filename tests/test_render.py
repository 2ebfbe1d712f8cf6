import numpy as np
import pytest
from PIL import Image

from personseg import render


@pytest.fixture
def photo():
    """A 30x40 noisy photo and an alpha that is 1 in the middle, 0 around and 0.5 on one column."""
    rgb = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    alpha = np.zeros((30, 40), np.float32)
    alpha[10:20, 10:30] = 1.0
    alpha[:, 35] = 0.5
    return rgb, alpha


def test_masks(photo):
    rgb, alpha = photo
    binary = render.mask(alpha, 0.6)
    assert binary.shape == (30, 40) and binary.dtype == np.uint8
    assert set(np.unique(binary)) == {0, 255} and binary[15, 15] == 255 and binary[0, 35] == 0
    soft = render.soft_alpha(alpha)
    assert soft.dtype == np.uint8 and soft[15, 15] == 255 and soft[0, 35] == 128 and soft[0, 0] == 0


def test_cutout_alpha_is_soft_alpha(photo):
    rgb, alpha = photo
    out = render.cutout(rgb, alpha)
    assert out.shape == (30, 40, 4) and out.dtype == np.uint8
    opaque_or_clear = (alpha == 0) | (alpha == 1)
    assert (out[opaque_or_clear][:, :3] == rgb[opaque_or_clear]).all()
    assert (out[alpha == 0.5][:, :3] != rgb[alpha == 0.5]).any()  # the soft column: estimated colours
    assert (out[..., 3] == render.soft_alpha(alpha)).all()
    assert (render.cutout(rgb, alpha, foreground=False)[..., :3] == rgb).all()


def test_cut_out_on_a_new_background_has_no_rim_of_the_old_one():
    """A red person with a soft edge shot on green, moved onto blue: with the estimated foreground the
    edge is red over blue, as a true composite; with the photo's colours it keeps a green rim."""
    w = 80
    alpha = np.clip((np.arange(w, dtype=np.float32) - 30) / 10, 0, 1)[None].repeat(40, 0)
    red, green, blue = (np.array(c, np.float32) for c in ((220, 30, 30), (30, 200, 40), (20, 20, 220)))
    shot = np.round(alpha[..., None] * red + (1 - alpha[..., None]) * green).astype(np.uint8)
    truth = alpha[..., None] * red + (1 - alpha[..., None]) * blue
    band = (alpha > 0.05) & (alpha < 0.95)
    error = {fg: np.abs(render.replace_background(shot, alpha, (20, 20, 220), foreground=fg) - truth)[band].mean()
             for fg in (True, False)}
    assert error[False] > 15 and error[True] < 0.2 * error[False], error  # measured 22.7 and 1.5


def test_overlay_and_compare_shapes(photo):
    rgb, alpha = photo
    tinted = render.overlay(rgb, alpha, 0.5)
    assert tinted.shape == rgb.shape and tinted.dtype == np.uint8
    assert (tinted[0, 0] == rgb[0, 0]).all()  # far from the mask: untouched
    side_by_side = render.compare(rgb, alpha, 0.5)
    assert side_by_side.shape == (30, 120, 3) and side_by_side.dtype == np.uint8
    assert (side_by_side[:, :40] == rgb).all()


@pytest.mark.parametrize("background", [(0, 0, 255), "blur", "image"])
def test_replace_background(photo, background):
    rgb, alpha = photo
    if background == "image":
        background = np.full((10, 50, 3), (9, 8, 7), np.uint8)  # other aspect ratio: resized to cover
    out = render.replace_background(rgb, alpha, background)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert (out[alpha == 1] == rgb[alpha == 1]).all()
    if isinstance(background, tuple):
        assert (out[alpha == 0] == background).all()
    elif isinstance(background, np.ndarray):
        assert (out[alpha == 0] == (9, 8, 7)).all()


def test_replace_background_is_the_alpha_blend_rounded():
    """The uint8 composite is a person + (1 - a) background, rounded (not truncated, weights not swapped),
    for any fractional alpha."""
    rng = np.random.default_rng(1)
    rgb, back = (rng.integers(0, 256, (37, 53, 3), dtype=np.uint8) for _ in range(2))
    alpha = rng.random((37, 53), dtype=np.float32)
    exact = alpha[..., None] * rgb + (1 - alpha[..., None]) * back.astype(np.float64)
    out = render.replace_background(rgb, alpha, back, foreground=False)
    assert out.dtype == np.uint8 and np.abs(out - exact).max() <= 0.51


def test_blur_keeps_the_person_out_of_the_background():
    rgb = np.zeros((60, 60, 3), np.uint8)
    rgb[20:40, 20:40] = 255  # a white person on black
    alpha = (rgb[..., 0] > 0).astype(np.float32)
    back = render.blurred_background(rgb, alpha)
    assert back.shape == (60, 60, 3)
    assert back[alpha == 0].max() < 1.0  # a plain blur would spread the white well into the black


def test_parse_background(tmp_path):
    assert render.parse_background("blur") == "blur"
    assert render.parse_background("White") == (255, 255, 255)
    assert render.parse_background("#FF8000") == (255, 128, 0)
    assert render.parse_background("0, 128,255") == (0, 128, 255)
    path = tmp_path / "beach.png"
    Image.new("RGB", (7, 5), (1, 2, 3)).save(path)
    image = render.parse_background(str(path))
    assert image.shape == (5, 7, 3) and tuple(image[0, 0]) == (1, 2, 3)


@pytest.mark.parametrize("value", ["purple", "#12345", "1,2", "1,2,300", "no/such/file.jpg"])
def test_parse_background_errors(value):
    with pytest.raises(ValueError, match="background"):
        render.parse_background(value)


def test_parse_background_without_images_never_reads_a_file(tmp_path):
    path = tmp_path / "beach.png"
    Image.new("RGB", (7, 5)).save(path)
    assert render.parse_background("#00b140", images=False) == (0, 177, 64)
    with pytest.raises(ValueError, match="is not 'blur' or a colour"):
        render.parse_background(str(path), images=False)


@pytest.mark.parametrize("kind", list(render.OUTPUTS))
def test_every_output_kind(kind):
    """Each kind of the table: a uint8 picture of the photo's size (compare: three side by side), RGBA
    exactly when the table says so, its file suffix PNG or JPEG."""
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    alpha = np.linspace(0, 1, 40, dtype=np.float32)[None].repeat(30, 0)
    picture = render.output(kind, rgb, alpha, 0.5, (0, 255, 0))
    assert picture.dtype == np.uint8 and picture.shape[:2] == (30, 120 if kind == "compare" else 40)
    assert (picture.ndim == 3 and picture.shape[2] == 4) == render.OUTPUTS[kind].rgba
    assert render.OUTPUTS[kind].suffix.endswith((".png", ".jpg")) and render.OUTPUTS[kind].about


def test_alpha_is_the_soft_grey_alpha_and_cutout_the_rgba():
    rgb = np.full((2, 2, 3), 7, np.uint8)
    alpha = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    np.testing.assert_array_equal(render.output("alpha", rgb, alpha, 0.5), [[0, 128], [255, 64]])
    np.testing.assert_array_equal(render.output("cutout", rgb, alpha, 0.5)[..., 3], [[0, 128], [255, 64]])
    with pytest.raises(ValueError, match="choose one of mask, alpha"):
        render.output("nope", rgb, alpha, 0.5)
