"""scripts/ship_model.py: threshold calibration looks at the validation split only (never the held-back
one), and the card keeps person-free folders' own figures."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture()
def ship_model():
    spec = importlib.util.spec_from_file_location("ship_model", Path(__file__).parents[1] / "scripts" / "ship_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Recorder:
    """Alpha 0.62 on the person (the top half of the mask), 0.5 elsewhere; notes the photos it saw, each
    photo filled with its own index."""

    threshold = 0.5

    def __init__(self):
        self.seen = []

    def predict(self, rgb):
        self.seen.append(int(rgb[0, 0, 0]))
        alpha = np.full(rgb.shape[:2], 0.5, np.float32)
        alpha[: rgb.shape[0] // 2] = 0.62
        return alpha


def test_calibration_looks_at_the_validation_split_only(ship_model, tmp_path, monkeypatch):
    folder = tmp_path / "a"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    mask = np.zeros((8, 6), np.uint8)
    mask[:4] = 255
    for i in range(30):
        Image.fromarray(np.full((8, 6, 3), i, np.uint8)).save(folder / "images" / f"{i:02d}.png")
        Image.fromarray(mask).save(folder / "masks" / f"{i:02d}.png")
    monkeypatch.setattr(ship_model, "FOLDERS", ("a",))
    recorder = Recorder()
    threshold, ious = ship_model.calibrate_threshold(recorder, tmp_path)
    assert recorder.seen == [9, 19, 29]  # index % 10 == 9; never 4, 14, 24 (held back) nor training files
    assert threshold == 0.55 and ious["0.55"] == 1.0 and ious["0.50"] == 0.5 and ious["0.65"] == 0.0


def test_card_figures_of_a_person_free_folder(ship_model):
    person_free = {"iou": float("nan"), "fp_share": 0.01, "over_5pct": 2, "images": 36, "person_free": True,
                   "dice": float("nan"), "precision": float("nan"), "recall": float("nan"), "auroc": float("nan"),
                   "boundary_f": float("nan")}
    assert ship_model.figures(person_free) == {"fp_share": 0.01, "over_5pct": 2, "person_free": True, "images": 36}
    people = {k: 0.9 for k in ship_model.METRICS} | {"images": 80, "accuracy": 0.95}
    assert ship_model.figures(people) == {k: 0.9 for k in ship_model.METRICS} | {"images": 80}
