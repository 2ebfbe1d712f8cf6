"""`personseg eval` and `evaluate_folders`: outputs, the split, mask alignment, bad inputs."""
import csv
import hashlib
import json
import math
import shutil

import numpy as np
from PIL import Image

from personseg.cli import main
from personseg.evaluate import evaluate_folders, list_pairs
from personseg.imageio import read_image


class MaskPredictor:
    """Returns the ground-truth mask of each image, resized to it independently of the code under test
    (PIL nearest), optionally shifted: a stand-in model whose IoU is known."""

    threshold = 0.5

    def __init__(self, folders, shift: int = 0):
        self.alphas = {}
        self.shift = shift
        for folder in folders:
            for image_path, mask_path in list_pairs(folder, "all"):
                if mask_path is None:
                    continue
                rgb = read_image(image_path)
                mask = Image.open(mask_path).convert("L").resize((rgb.shape[1], rgb.shape[0]), Image.NEAREST)
                self.alphas[self._key(rgb)] = np.asarray(mask, np.float32) / 255

    @staticmethod
    def _key(rgb):
        return hashlib.sha1(rgb.tobytes()).hexdigest()

    def predict(self, rgb):
        return np.roll(self.alphas[self._key(rgb)], self.shift, axis=1)


def small_copy(data_dir, tmp_path, name, n=3):
    """The first n validation pairs of a shared folder, so the stand-in reads few images."""
    target = tmp_path / name
    for sub in ("images", "masks"):
        (target / sub).mkdir(parents=True)
    for image, mask in list_pairs(data_dir / name, "val", n):
        shutil.copy(image, target / "images" / image.name)
        shutil.copy(mask, target / "masks" / mask.name)
    return target


def test_eval_cli_writes_metrics_csv_and_report(data_dir, tiny_checkpoint, tmp_path):
    out = tmp_path / "eval"
    folders = [str(data_dir / "portraits"), str(data_dir / "ccp")]
    assert main(["eval", str(tiny_checkpoint), *folders, "--limit", "3", "--out", str(out),
                 "--worst", "2", "--device", "cpu"]) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_folder"]) == {"portraits", "ccp"}
    assert metrics["split"] == "val" and metrics["threshold"] == 0.5
    assert metrics["checkpoint"]["arch"] == "unet_mobilenet_v2"
    assert metrics["overall"]["images"] == 6 and metrics["overall"]["errors"] == 0
    for entry in [metrics["overall"], *metrics["per_folder"].values()]:
        for key in ("iou", "dice", "precision", "recall", "accuracy", "boundary_f"):
            assert 0.0 <= entry[key] <= 1.0, key
    assert all(m["images"] == 3 for m in metrics["per_folder"].values())

    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and list(rows[0]) == ["folder", "file", "iou", "dice", "precision", "recall", "ms"]
    assert [r["file"] for r in rows if r["folder"] == "portraits"] == \
        [p.name for p, _ in list_pairs(data_dir / "portraits", "val", 3)]

    page = (out / "report.html").read_text()
    worst = sorted(rows, key=lambda r: float(r["iou"]))[:2]
    assert [w["file"] for w in metrics["worst"]] == [w["file"] for w in worst]
    pictures = sorted((out / "report_files").glob("worst_*.jpg"))
    assert len(pictures) == 2
    for w, picture in zip(worst, pictures):
        assert w["file"] in page and f"report_files/{picture.name}" in page
        assert Image.open(picture).size[0] > Image.open(picture).size[1] * 2  # three tiles side by side
    assert "report_files/pr_curve.png" in page and (out / "report_files" / "pr_curve.png").is_file()


def test_perfect_predictor_scores_one(data_dir, tmp_path):
    """IoU 1.0 only if every mask lines up with its image, including hsd's masks of another size."""
    folders = [small_copy(data_dir, tmp_path, name, n=2) for name in ("hsd", "portraits", "ccp")]
    result = evaluate_folders(MaskPredictor(folders), folders, split="all", worst=2)
    assert result["overall"]["iou"] == 1.0 and result["overall"]["boundary_f"] == 1.0
    assert all(m["iou"] == 1.0 and m["images"] == 2 for m in result["per_folder"].values())
    assert result["per_folder"]["hsd"]["masks_resized"] > 0  # the resize path was exercised
    assert len(result["worst"]) == 2 and result["worst"][0]["panel"].dtype == np.uint8

    shifted = evaluate_folders(MaskPredictor(folders[:1], shift=8), folders[:1], split="all")
    assert shifted["overall"]["iou"] < 0.99  # the check above can fail


def test_val_split_is_the_training_split(tmp_path):
    from personseg.data import split_items

    folder = tmp_path / "d"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    names = [f"{i:03d}" for i in range(25)]
    for name in names:
        (folder / "images" / f"{name}.png").touch()
        (folder / "masks" / f"{name}.png").touch()
    (folder / "images" / "010a.png").touch()  # no mask: in no split, must not shift the others
    (folder / "images" / ".hidden.png").touch()
    pairs = list_pairs(folder, "val")
    expected = split_items([(folder / "images" / f"{n}.png", folder / "masks" / f"{n}.png") for n in names], "val")
    assert pairs == expected and len(pairs) == 2
    everything = list_pairs(folder, "all")
    assert len(everything) == 26 and (folder / "images" / "010a.png", None) in everything
    assert len(list_pairs(folder, "all", limit=4)) == 4


def test_bad_images_are_reported_and_counted(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "synthetic"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / "images" / f"{i}.png")
        mask = np.zeros((48, 64), np.uint8)
        mask[10:40, 20:40] = 255
        mask[0, :] = 128  # ignored pixels
        Image.fromarray(mask).save(folder / "masks" / f"{i}.png")
    data = (folder / "images" / "1.png").read_bytes()
    (folder / "images" / "1.png").write_bytes(data[: len(data) // 2])  # truncated
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(folder / "images" / "3.png")  # no mask

    out = tmp_path / "eval"
    assert main(["eval", str(tiny_checkpoint), str(folder), "--split", "all", "--out", str(out),
                 "--device", "cpu", "--no-refine"]) == 1
    err = capsys.readouterr().err
    assert "1.png" in err and "3.png" in err and "no mask" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["errors"] == 2 and metrics["overall"]["images"] == 2
    assert {e["file"] for e in metrics["errors"]} == {"1.png", "3.png"}
    assert not math.isnan(metrics["overall"]["iou"])


def test_eval_cli_usage_errors(tiny_checkpoint, tmp_path, capsys):
    assert main(["eval", str(tiny_checkpoint), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no images/ folder" in capsys.readouterr().err
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    assert main(["eval", str(tmp_path / "missing.pt"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "cannot load the model" in capsys.readouterr().err
