import numpy as np
import pytest
from PIL import Image

from personseg import imageio
from personseg.imageio import ImageReadError, list_inputs, read_image, write_image_atomic


def _save(tmp_path, name, image, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(tmp_path, "rotated.jpg", Image.new("RGB", (40, 20), (200, 10, 10)), exif=exif)
    rgb = read_image(path)
    assert rgb.shape == (40, 20, 3) and rgb.dtype == np.uint8


def test_grayscale_gives_three_equal_channels(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    rgb = read_image(_save(tmp_path, "gray.png", Image.fromarray(gray)))
    assert rgb.shape == (8, 8, 3)
    assert (rgb == gray[..., None]).all()


@pytest.mark.parametrize(
    "mode, opaque, clear, expected",
    [("LA", (90, 255), (0, 0), (90, 90, 90)), ("RGBA", (10, 20, 30, 255), (0, 0, 0, 0), (10, 20, 30))],
)
def test_transparency_is_composited_on_white(tmp_path, mode, opaque, clear, expected):
    image = Image.new(mode, (4, 2), opaque)
    image.putpixel((0, 0), clear)
    rgb = read_image(_save(tmp_path, "alpha.png", image))
    assert rgb.shape == (2, 4, 3)
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[1, 3]) == expected


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 50, 50] + [0] * 762)
    image.putpixel((0, 0), 0)
    rgb = read_image(_save(tmp_path, "palette.png", image, transparency=0))
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[3, 3]) == (200, 50, 50)


def test_16_bit_ramp_spans_full_8_bit_range(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (3, 1))
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    rgb = read_image(_save(tmp_path, "deep.png", image))
    assert rgb[..., 0].min() == 0 and rgb[..., 0].max() == 255
    assert (np.diff(rgb[0, :, 0].astype(int)) >= 0).all()
    assert len(np.unique(rgb)) > 250  # scaled, not clipped to a few values


def test_cmyk_and_one_bit(tmp_path):
    cmyk = read_image(_save(tmp_path, "cmyk.tif", Image.new("CMYK", (5, 3), (0, 0, 0, 0))))
    assert cmyk.shape == (3, 5, 3) and (cmyk == 255).all()
    one_bit = Image.new("1", (6, 2), 0)
    one_bit.putpixel((1, 1), 1)
    rgb = read_image(_save(tmp_path, "bits.png", one_bit))
    assert set(np.unique(rgb)) == {0, 255} and tuple(rgb[1, 1]) == (255, 255, 255)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = _save(tmp_path, "big.png", Image.new("RGB", (20, 20)))
    monkeypatch.setattr(imageio, "MAX_PIXELS", 399)
    with pytest.raises(ImageReadError, match="PERSONSEG_MAX_PIXELS") as info:
        read_image(path)
    assert "big.png" in str(info.value)
    monkeypatch.setenv("PERSONSEG_MAX_PIXELS", "400")
    assert read_image(path).shape == (20, 20, 3)


def _truncated_jpeg(path):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "name, make",
    [
        ("truncated.jpg", _truncated_jpeg),
        ("empty.jpg", lambda p: p.write_bytes(b"")),
        ("notes.jpg", lambda p: p.write_text("not a picture")),
        ("missing.png", lambda p: None),
    ],
)
def test_bad_files_raise_one_line_error_naming_the_file(tmp_path, name, make):
    path = tmp_path / name
    make(path)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert name in message and "\n" not in message


def test_write_image_atomic(tmp_path):
    target = tmp_path / "out" / "a.png"
    write_image_atomic(target, np.full((3, 4), 7, np.uint8))
    assert [p.name for p in target.parent.iterdir()] == ["a.png"]
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_image_atomic(target, np.zeros((3, 4), np.uint8))
    assert np.asarray(Image.open(target)).max() == 7
    write_image_atomic(target, np.zeros((3, 4), np.uint8), overwrite=True)
    assert np.asarray(Image.open(target)).max() == 0


def test_write_image_atomic_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(OSError):
        write_image_atomic(tmp_path / "x.jpg", np.zeros((3, 4, 4), np.uint8))  # JPEG cannot hold RGBA
    assert list(tmp_path.iterdir()) == []


def test_list_inputs(tmp_path):
    for name in ["b.jpg", "A.PNG", "notes.txt", ".hidden.jpg", "sub/c.webp"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    names = lambda paths: [p.name for p in paths]  # noqa: E731
    assert names(list_inputs([str(tmp_path)])) == ["A.PNG", "b.jpg"]
    assert names(list_inputs([str(tmp_path)], recursive=True)) == ["A.PNG", "b.jpg", "c.webp"]
    assert names(list_inputs([str(tmp_path / "*.jpg"), str(tmp_path / "b.jpg"), str(tmp_path)])) == ["A.PNG", "b.jpg"]
    assert names(list_inputs([str(tmp_path / "notes.txt")])) == ["notes.txt"]  # named explicitly: kept
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        list_inputs([str(tmp_path / "nope.jpg")])
    with pytest.raises(FileNotFoundError, match="no files match"):
        list_inputs([str(tmp_path / "*.gif")])


def png_header(width: int, height: int) -> bytes:
    """A PNG of width x height (8-bit RGB) with almost no pixel data: its header opens, it never decodes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_huge_image_is_refused_with_our_limit_not_pillows(tmp_path, monkeypatch):
    monkeypatch.delenv("PERSONSEG_MAX_PIXELS", raising=False)
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(20000, 20000))
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert "100,000,000" in message and "PERSONSEG_MAX_PIXELS=400000000" in message
    assert "178,956,970" not in message and "178956970" not in message


def test_pillow_limit_survives_threads_reading_at_once(tmp_path, monkeypatch):
    """read_image lifts Pillow's global pixel limit around each header read; two threads overlapping there
    must not leave it lifted for the process (the server reads images in several threads)."""
    import threading
    import time

    from PIL import Image

    from personseg.imageio import read_image

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    real_open, before = Image.open, Image.MAX_IMAGE_PIXELS

    def slow_open(*args, **kwargs):
        time.sleep(0.05)  # every reader is inside the lifted window at once, if nothing serialises them
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", slow_open)
    threads = [threading.Thread(target=read_image, args=(path,)) for _ in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join()
    assert Image.MAX_IMAGE_PIXELS == before
