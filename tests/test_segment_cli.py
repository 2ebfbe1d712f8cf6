"""`personseg segment` end to end on real photos, in-process, with a tiny random-weight model."""
import hashlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from personseg.cli import main


@pytest.fixture
def photos(data_dir, tmp_path):
    """tmp/in/ with two portraits (one EXIF-rotated: displayed 800x600) and sub/ with a street photo and
    a second 00001.jpg, so a recursive run has two inputs with the same name."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    portraits, hsd = data_dir / "portraits" / "images", data_dir / "hsd" / "images"
    shutil.copy(portraits / "00001.jpg", folder / "00001.jpg")
    shutil.copy(portraits / "00001.jpg", folder / "sub" / "00001.jpg")
    shutil.copy(hsd / "1.jpg", folder / "sub" / "1.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(portraits / "00003.jpg").save(folder / "rotated.jpg", exif=exif, quality=95)
    return folder


@pytest.fixture
def segment(tiny_checkpoint, capsys):
    """Run `personseg segment ARGS --model tiny --device cpu`; returns (exit code, stderr).
    Without `refine=True` it adds --no-refine: the guided filter is the slow part on 2 CPU cores."""
    def run(*args, refine=False):
        options = ["--model", str(tiny_checkpoint), "--device", "cpu"] + ([] if refine else ["--no-refine"])
        code = main(["segment", *map(str, args), *options])
        return code, capsys.readouterr().err
    return run


def _displayed_size(path):
    with Image.open(path) as im:
        return (im.height, im.width) if im.getexif().get(0x0112) in (5, 6, 7, 8) else im.size


def _hashes(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_output_kind(photos, tmp_path, segment):
    out = tmp_path / "out"
    code, err = segment(photos / "00001.jpg", photos / "rotated.jpg", "-o", out,
                        "--save", "mask,alpha", "--save", "cutout", "--save", "overlay,compare,background", refine=True)
    assert code == 0, err
    for stem in ["00001", "rotated"]:
        size = _displayed_size(photos / f"{stem}.jpg")  # (width, height)
        expected = {"mask.png": "L", "alpha.png": "L", "cutout.png": "RGBA", "overlay.jpg": "RGB",
                    "compare.jpg": "RGB", "background.jpg": "RGB"}
        for suffix, mode in expected.items():
            with Image.open(out / f"{stem}_{suffix}") as im:
                assert im.mode == mode, suffix
                width = size[0] * 3 if suffix == "compare.jpg" else size[0]
                assert im.size == (width, size[1]), suffix
        assert set(np.unique(np.asarray(Image.open(out / f"{stem}_mask.png")))) <= {0, 255}
    assert _displayed_size(photos / "rotated.jpg") == (800, 600)
    assert len(list(out.iterdir())) == 12  # and no temp files


def test_tta_flag_changes_the_alpha(photos, tmp_path, segment):
    masks = {}
    for flag in ("--tta", "--no-tta"):
        out = tmp_path / flag.strip("-")
        code, err = segment(photos / "00001.jpg", "-o", out, "--save", "alpha", flag)
        assert code == 0, err
        masks[flag] = np.asarray(Image.open(out / "00001_alpha.png"), np.int16)
    assert masks["--tta"].shape == masks["--no-tta"].shape
    assert (masks["--tta"] != masks["--no-tta"]).any()  # the same run with the mirror's half averaged in


def test_keep_largest_flag_keeps_a_part_of_the_mask(photos, tmp_path, segment):
    masks = {}
    for keep in ("all", "largest"):
        code, err = segment(photos / "sub" / "1.jpg", "-o", tmp_path / keep, "--save", "mask", "--keep", keep,
                            "--threshold", "0.4")
        assert code == 0, err
        masks[keep] = np.asarray(Image.open(tmp_path / keep / "1_mask.png")) > 0
    assert masks["largest"].any() and not (masks["largest"] & ~masks["all"]).any()


def test_folder_recursive_mirrors_folders_on_name_clash(photos, tmp_path, segment):
    out = tmp_path / "out"
    code, err = segment(photos, "-o", out, "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "00001_cutout.png", "00001_mask.png", "rotated_cutout.png", "rotated_mask.png"]  # default: mask,cutout
    out = tmp_path / "out_recursive"
    code, err = segment(photos, "-o", out, "--recursive", "--save", "mask")
    assert code == 0, err
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["00001_mask.png", "rotated_mask.png", "sub/00001_mask.png", "sub/1_mask.png"]
    assert "4 images segmented" in err


def test_glob_input(photos, tmp_path, segment):
    code, err = segment(str(photos / "sub" / "*.jpg"), "-o", tmp_path / "out", "--save", "mask")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00001_mask.png", "1_mask.png"]


def test_bad_inputs_are_reported_and_the_rest_done(photos, tmp_path, segment):
    data = (photos / "00001.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "notes.png").write_text("not an image")
    out = tmp_path / "out"
    code, err = segment(photos, "-o", out, "--save", "mask", "--batch-size", "2")
    assert code == 1
    assert (out / "00001_mask.png").is_file() and (out / "rotated_mask.png").is_file()
    lines = err.strip().splitlines()
    for name in ["truncated.jpg", "empty.jpg", "notes.png"]:
        assert any(name in line and line.startswith("error:") for line in lines), err
    assert lines[-1].startswith("2 images segmented") and "3 failed" in lines[-1]


def test_existing_outputs_need_overwrite(photos, tmp_path, segment):
    out = tmp_path / "out"
    out.mkdir()
    (out / "00001_mask.png").write_bytes(b"keep me")
    code, err = segment(photos / "00001.jpg", "-o", out, "--save", "mask")
    assert code == 1 and "--overwrite" in err
    assert (out / "00001_mask.png").read_bytes() == b"keep me"
    code, err = segment(photos / "00001.jpg", "-o", out, "--save", "mask", "--overwrite")
    assert code == 0, err
    assert Image.open(out / "00001_mask.png").size == (600, 800)


def test_inputs_are_never_modified(photos, segment):
    (photos / "rotated_mask.png").write_bytes((photos / "sub" / "1.jpg").read_bytes())  # looks like an output
    before = _hashes(photos)
    code, err = segment(photos, "-o", photos, "--save", "mask", "--overwrite")
    assert code == 1 and "would replace an input" in err  # rotated.jpg's mask is an input
    after = _hashes(photos)
    assert {p: after[p] for p in before} == before
    assert (photos / "00001_mask.png").is_file()


def test_model_errors_exit_2(tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(b"")
    code = main(["segment", str(tmp_path / "a.png"), "-o", str(tmp_path), "--model", str(tmp_path / "no.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "no.pt" in err and len(err.strip().splitlines()) == 1


def test_help_lists_every_option():
    result = subprocess.run([sys.executable, "-m", "personseg", "segment", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for option in ["--output", "--save", "--background", "--threshold", "--no-refine", "--model", "--tta", "--keep",
                   "--device", "--batch-size", "--recursive", "--overwrite", "--quiet", "--min-peak", "examples:"]:
        assert option in result.stdout


# ------------------------------------------------------------------------- hostile inputs (issue 13)

@pytest.fixture
def two_pictures(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(folder / f"{name}.png")
    return folder


def test_output_that_is_a_file_is_refused_before_any_work(two_pictures, tmp_path, segment, monkeypatch):
    import personseg

    target = tmp_path / "out.txt"
    target.write_text("keep")
    monkeypatch.setattr(personseg, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    code, err = segment(two_pictures, "-o", target)
    assert code == 2 and "out.txt" in err and "not a folder" in err and len(err.strip().splitlines()) == 1
    assert target.read_text() == "keep"


def test_bad_max_pixels_setting_is_a_usage_error(two_pictures, tmp_path, segment, monkeypatch):
    monkeypatch.setenv("PERSONSEG_MAX_PIXELS", "abc")
    code, err = segment(two_pictures, "-o", tmp_path / "out")
    assert code == 2 and "PERSONSEG_MAX_PIXELS='abc'" in err and len(err.strip().splitlines()) == 1


def test_ctrl_c_mid_image_leaves_whole_images_and_exits_130(two_pictures, tmp_path, segment, monkeypatch):
    from personseg import imageio

    real, calls = imageio.write_image_atomic, []

    def interrupting(path, image, overwrite=False):
        calls.append(path)
        if len(calls) == 4:  # a.png's two outputs, b.png's first written, then its second
            raise KeyboardInterrupt
        return real(path, image, overwrite)

    monkeypatch.setattr(imageio, "write_image_atomic", interrupting)
    out = tmp_path / "out"
    code, err = segment(two_pictures, "-o", out, "--save", "mask,cutout")
    assert code == 130 and "interrupted" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a_cutout.png", "a_mask.png"]
    monkeypatch.setattr(imageio, "write_image_atomic", real)
    code, err = segment(two_pictures, "-o", out, "--save", "mask,cutout")  # a plain rerun finishes b
    assert code == 1 and "a_mask.png already exists" in err and (out / "b_mask.png").exists()


def test_missing_path_and_empty_folder_are_reported_and_the_rest_done(two_pictures, tmp_path, segment):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    code, err = segment(two_pictures, tmp_path / "missing.jpg", tmp_path / "empty", "-o", out, "--save", "mask")
    assert code == 1 and (out / "a_mask.png").is_file() and (out / "b_mask.png").is_file()
    lines = err.strip().splitlines()
    assert any(line.startswith("error:") and "missing.jpg" in line for line in lines), err
    assert any(line.startswith("error:") and "empty" in line and "no images" in line for line in lines), err
    assert lines[-1].startswith("2 images segmented") and "2 failed" in lines[-1]
