"""`personseg eval` and `evaluate_folders`: outputs, the split, mask alignment, bad inputs."""
import csv
import hashlib
import json
import math
import shutil

import numpy as np
from PIL import Image

import pytest

from personseg.cli import main
from personseg.evaluate import evaluate_folders, folder_table, list_items, list_pairs, write_outputs
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
    assert len(rows) == 6 and list(rows[0]) == ["folder", "file", "iou", "dice", "precision", "recall", "ms",
                                                "person_share"]
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


def test_eval_cli_input_size_runs_the_model_at_another_budget(data_dir, tiny_checkpoint, tmp_path, monkeypatch):
    """--input-size WxH: every photo reaches the model at that area (its own aspect ratio), and metrics.json
    says which budget ran; a malformed size is a usage error."""
    from personseg.predict import Predictor

    seen = []
    forward = Predictor._forward
    monkeypatch.setattr(Predictor, "_forward", lambda self, images, size, state=None: (
        seen.append(size), forward(self, images, size, state))[1])
    out = tmp_path / "eval"
    assert main(["eval", str(tiny_checkpoint), str(data_dir / "portraits"), "--limit", "2", "--out", str(out),
                 "--input-size", "160x90", "--worst", "0", "--device", "cpu"]) == 0
    assert len(seen) >= 2 and all(abs(h * w - 160 * 90) < 0.1 * 160 * 90 for h, w in seen)  # and a warm-up
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checkpoint"]["run_input_size"] == [160, 90]
    with pytest.raises(SystemExit):
        main(["eval", str(tiny_checkpoint), str(data_dir / "portraits"), "--out", str(out), "--input-size", "160"])


def test_eval_cli_usage_errors(tiny_checkpoint, tmp_path, capsys):
    assert main(["eval", str(tiny_checkpoint), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no images/ folder" in capsys.readouterr().err
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    assert main(["eval", str(tmp_path / "missing.pt"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "cannot load the model" in capsys.readouterr().err


def test_holdout_split_lists_the_held_back_files(tmp_path):
    folder = tmp_path / "d"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(25):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "images" / f"{i:03d}.png")
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "masks" / f"{i:03d}.png")
    names = {split: [p.stem for p, _ in list_pairs(folder, split)] for split in ("val", "holdout", "train")}
    assert names["holdout"] == ["004", "014", "024"] and names["val"] == ["009", "019"]
    assert len(names["train"]) == 20 and not set(names["train"]) & (set(names["holdout"]) | set(names["val"]))
    result = evaluate_folders(SharePredictor(), [folder], split="holdout")
    assert [r["file"] for r in result["per_image"]] == ["004.png", "014.png", "024.png"]
    assert result["split"] == "holdout"


class SharePredictor:
    """A stand-in model for person-free photos: calls person the top k rows of an image whose pixels
    all hold the value k."""

    threshold = 0.5

    def predict(self, rgb):
        alpha = np.zeros(rgb.shape[:2], np.float32)
        alpha[: int(rgb[0, 0, 0])] = 1.0
        return alpha


def test_person_free_folder_reports_false_alarms(tmp_path):
    folder = tmp_path / "negatives"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    # 20 x 10 photos (200 pixels) with 0, 1 and 4 rows called person: 0%, 5% (not over 5%) and 20%
    for i, rows in enumerate((0, 1, 4)):
        Image.fromarray(np.full((20, 10, 3), rows, np.uint8)).save(folder / "images" / f"{i}.png")
        Image.fromarray(np.zeros((20, 10), np.uint8)).save(folder / "masks" / f"{i}.png")
    result = evaluate_folders(SharePredictor(), [folder], split="all")
    m = result["per_folder"]["negatives"]
    assert m["person_free"] and m["images"] == 3
    assert m["fp_share"] == pytest.approx(50 / 600, abs=1e-12)  # (0 + 10 + 40) of 3 x 200 pixels
    assert m["over_5pct"] == 1
    assert all(math.isnan(m[k]) for k in ("iou", "dice", "precision", "recall", "mean_image_iou"))
    assert [r["person_share"] for r in result["per_image"]] == [0.0, 0.05, 0.2]
    assert "person-free: 8.33% of pixels called person, 1 of 3 photos over 5%" in folder_table(result)

    write_outputs(tmp_path / "out", result, {"path": "stand-in"})
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())["per_folder"]["negatives"]
    assert saved["fp_share"] == pytest.approx(50 / 600) and saved["over_5pct"] == 1 and saved["iou"] is None
    assert "photos over 5%" in (tmp_path / "out" / "report.html").read_text()


def test_folder_with_a_person_is_not_person_free(tmp_path):
    folder = tmp_path / "d"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    mask = np.zeros((20, 10), np.uint8)
    mask[:2] = 255  # the two rows the stand-in calls person
    Image.fromarray(np.full((20, 10, 3), 2, np.uint8)).save(folder / "images" / "0.png")
    Image.fromarray(mask).save(folder / "masks" / "0.png")
    m = evaluate_folders(SharePredictor(), [folder], split="all")["per_folder"]["d"]
    assert m["iou"] == 1.0 and "person_free" not in m and "fp_share" not in m


def write_coco_folder(tmp_path):
    """write_coco's two images as a data folder: images/ + annotations.json, no masks/."""
    from test_data import write_coco

    root = write_coco(tmp_path)
    (root / "instances.json").rename(root / "annotations.json")
    return root


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on numpy 2
def test_coco_folder_scores_the_union_of_persons_with_crowd_ignored(tmp_path):
    from pycocotools import mask as mask_utils

    root = write_coco_folder(tmp_path)
    h, w = 60, 80
    person_a = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([[10, 10, 50, 10, 50, 50, 10, 50]], h, w)))
    person_b = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([[0, 0, 10, 0, 10, 10, 0, 10]], h, w)))
    crowd_only = np.zeros((h, w), bool)
    crowd_only[30:60, 40:80] = True
    crowd_only &= person_a == 0
    assert [p.name for p, _ in list_items(root, "all")] == ["a.jpg", "b.jpg"] and list_items(root, "val") == []

    class Fixed:
        """Predicts a fixed alpha per image (told apart by file order: a, then b)."""
        threshold = 0.5

        def __init__(self, a, b):
            self.alphas = [a.astype(np.float32), b.astype(np.float32)]
            self.calls = 0

        def predict(self, rgb):
            self.calls += 1
            return self.alphas[0 if self.calls <= 2 else 1]  # the first call is the warm-up, on image a

    # the persons exactly, with the crowd called person or not: the crowd is ignored either way
    for a in (person_a.astype(bool), person_a.astype(bool) | crowd_only):
        m = evaluate_folders(Fixed(a, person_b), [root], split="all")["overall"]
        assert m["iou"] == 1.0 and m["images"] == 2
    # the dog of image b is background; everything called person: IoU = person pixels / valid pixels
    m = evaluate_folders(Fixed(np.ones((h, w)), np.ones((h, w))), [root], split="all")["overall"]
    persons = int(person_a.sum() + person_b.sum())
    assert m["iou"] == pytest.approx(persons / (2 * h * w - crowd_only.sum()), abs=1e-12)
    assert persons / (2 * h * w) != pytest.approx(m["iou"], abs=1e-3)  # counting the crowd would show


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_eval_cli_takes_a_coco_folder(tiny_checkpoint, tmp_path):
    (tmp_path / "coco").mkdir()
    root = write_coco_folder(tmp_path / "coco")
    out = tmp_path / "eval"
    assert main(["eval", str(tiny_checkpoint), str(root), "--split", "all", "--out", str(out),
                 "--device", "cpu", "--no-refine", "--worst", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["per_folder"]["coco"]["images"] == 2


def test_eval_refuses_a_mask_of_another_aspect_ratio_and_notes_images_without_masks(tmp_path, capsys):
    """One rule with the training loader and `data check`: a stretched mask is an error, named."""
    from PIL import Image

    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i in range(10):
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "images" / f"{i:02d}.png")
        if i != 3:
            size = (30, 60) if i == 9 else (60, 40)  # the validation file's mask is 60x30 for a 60x40 image
            Image.fromarray(np.zeros(size[::-1], np.uint8)).save(tmp_path / "masks" / f"{i:02d}.png")

    class Nobody:
        threshold = 0.5

        def predict(self, rgb):
            return np.zeros(rgb.shape[:2], np.float32)

    result = evaluate_folders(Nobody(), [tmp_path], "all")
    assert [e["file"] for e in result["errors"]] == ["03.png", "09.png"]
    assert "another aspect ratio" in result["errors"][1]["error"]
    capsys.readouterr()
    result = evaluate_folders(Nobody(), [tmp_path], "train")  # images without masks are not in any split
    assert result["per_folder"][tmp_path.name]["without_mask"] == 1
    assert "1 image has no mask in masks/ and is not scored" in capsys.readouterr().err
