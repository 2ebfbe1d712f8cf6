"""The models that ship inside the package: they load by name, work on a real photo out of the box, and
still reach the figures of their model card (stored in the checkpoint's meta["card"] by
scripts/ship_model.py) on the validation split."""
from pathlib import Path

import numpy as np
import pytest

import personseg
from personseg.checkpoint import read_checkpoint
from personseg.data import write_composite_folder
from personseg.evaluate import evaluate_folders
from personseg.predict import DEFAULT_MODEL, WEIGHTS_DIR

SHIPPED = sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))


def test_the_default_model_ships():
    assert DEFAULT_MODEL in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_loads_by_name_and_finds_the_astronaut(name):
    from skimage import data

    seg = personseg.load(name)
    rgb = data.astronaut()  # Eileen Collins, NASA: public domain, ships with scikit-image
    alpha = seg.predict(rgb)
    assert alpha.shape == rgb.shape[:2] and alpha.dtype == np.float32
    mask = alpha >= seg.threshold
    # 512x512: her face at about rows 80-160, columns 180-260, the suit below; a space-shuttle model
    # on a grey wall fills the top right
    assert 0.2 < mask.mean() < 0.8
    assert mask[80:160, 180:260].mean() > 0.9, "the astronaut's face is not found"
    assert mask[200:450, 100:300].mean() > 0.9, "the astronaut's suit is not found"
    assert mask[0:250, 380:500].mean() < 0.1, "the shuttle model and the wall are taken for a person"


@pytest.mark.parametrize("name", SHIPPED)
def test_reaches_its_model_card_on_the_validation_split(name, data_dir, tmp_path):
    card = read_checkpoint(WEIGHTS_DIR / f"{name}.pt")["meta"]["card"]
    seg = personseg.load(name)
    result = evaluate_folders(seg, [data_dir / f for f in ("portraits", "ccp", "hsd")], split="val")
    for folder, metrics in result["per_folder"].items():
        assert metrics["images"] == card[folder]["images"]
        assert metrics["iou"] == pytest.approx(card[folder]["iou"], abs=0.005), folder
    people = write_composite_folder(data_dir, Path(tmp_path) / "people")
    iou = evaluate_folders(seg, [people], split="all")["overall"]["iou"]
    assert iou == pytest.approx(card["people"]["iou"], abs=0.005)
