"""The models that ship inside the package: they load by name, work on a real photo out of the box, and
still reach the figures of their model card (stored in the checkpoint's meta["card"] by
scripts/ship_model.py) on the validation split of every folder ship_model.py scores, and leave a photo
with no one in it (almost) empty."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import personseg
from PIL import Image

from personseg.checkpoint import read_checkpoint
from personseg.cli import main
from personseg.data import write_composite_folder
from personseg.evaluate import evaluate_folders
from personseg.predict import DEFAULT_MODEL, WEIGHTS_DIR

SHIPPED = sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))
# models that add heads to another shipped model's frozen trunk (scripts/ship_parts.py): their mask is that
# model's, checked for equality below rather than by scoring every folder again
HEADS_ON = {"parts": "accurate"}
PERSON_FREE_MAX = 0.02  # share of a person-free photo's pixels that may be called person


def repo_script(relative: str):
    """The module of a script outside the package (scripts/, benchmarks/), loaded from its file."""
    path = Path(__file__).parents[1] / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ship_model_folders() -> tuple[str, ...]:
    """The folders scripts/ship_model.py scores (its FOLDERS), so this test follows the card's list."""
    return repo_script("scripts/ship_model.py").FOLDERS


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


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on numpy 2
@pytest.mark.parametrize("name", [n for n in SHIPPED if n not in HEADS_ON])
def test_reaches_its_model_card_on_the_validation_split(name, data_dir, tmp_path):
    card = read_checkpoint(WEIGHTS_DIR / f"{name}.pt")["meta"]["card"]
    folders = ship_model_folders()
    missing = [f for f in folders if f not in card]
    assert not missing, (f"the card of {name} has no figures for {', '.join(missing)}: re-ship it with "
                         "scripts/ship_model.py, which scores every folder")
    seg = personseg.load(name)
    result = evaluate_folders(seg, [data_dir / f for f in folders], split="val")
    for folder, metrics in result["per_folder"].items():
        assert metrics["images"] == card[folder]["images"], folder
        if card[folder].get("person_free"):
            assert metrics["fp_share"] == pytest.approx(card[folder]["fp_share"], abs=0.005), folder
        else:
            assert metrics["iou"] == pytest.approx(card[folder]["iou"], abs=0.005), folder
    people = write_composite_folder(data_dir, Path(tmp_path) / "people")
    iou = evaluate_folders(seg, [people], split="all")["overall"]["iou"]
    assert iou == pytest.approx(card["people"]["iou"], abs=0.005)


# (name, photo) pairs measured over the 2% target, kept as strict expected failures so a model that fixes
# them turns the test red until the mark is removed. None now: accurate called 12% of the coffee cup person
# (48% in the first release) until its presence head (scripts/fit_presence.py) ruled the photo person-free.
OVER_TARGET: set[tuple[str, str]] = set()


@pytest.mark.parametrize("photo", ["chelsea", "coffee"])  # a cat, a cup of coffee: scikit-image's public photos
@pytest.mark.parametrize("name", SHIPPED)
def test_a_photo_with_no_one_in_it_gives_an_almost_empty_mask(name, photo, tmp_path, request):
    from skimage import data

    if (name, photo) in OVER_TARGET:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{name} on {photo}: over the target, see OVER_TARGET"))

    path = tmp_path / f"{photo}.png"
    Image.fromarray(getattr(data, photo)()).save(path)
    assert main(["segment", str(path), "-o", str(tmp_path / "out"), "--save", "mask", "--model", name,
                 "--device", "cpu", "--quiet"]) == 0
    mask = np.asarray(Image.open(tmp_path / "out" / f"{photo}_mask.png"))
    assert mask.shape == getattr(data, photo)().shape[:2]
    share = float((mask > 127).mean())
    assert share < PERSON_FREE_MAX, f"{name} calls {share:.1%} of the {photo} photo a person"


@pytest.mark.parametrize("name, base", sorted(HEADS_ON.items()))
def test_a_heads_model_keeps_the_mask_of_the_model_it_extends_and_finds_parts_and_joints(name, base, data_dir):
    heads, plain = personseg.load(name), personseg.load(base)
    assert heads.threshold == plain.threshold and heads.tta == plain.tta
    from personseg.imageio import read_image
    from personseg.parts import ACCESSORIES_ID, CLOTHES_ID, HAIR

    photo = read_image(sorted((data_dir / "ccp" / "images").glob("*.jpg"))[9])  # a validation photo: one person, upright
    result = heads.predict_all(photo)
    assert np.abs(result["alpha"] - plain.predict(photo)).max() < 1e-4  # the same mask
    person = result["alpha"] >= heads.threshold
    shares = np.bincount(result["parts"][person].ravel(), minlength=6) / person.sum()
    assert shares[CLOTHES_ID] > 0.3 and shares[HAIR] > 0.01 and shares[0] == 0, shares  # never background inside
    assert len(result["people"]) == 1
    k = result["people"][0]["keypoints"]  # COCO order: nose 0, ankles 15 and 16
    assert k[0, 1] < k[15, 1] and k[0, 1] < k[16, 1], "the nose is not above the ankles"
    assert ACCESSORIES_ID == 5


@pytest.mark.parametrize("name", sorted(HEADS_ON))
def test_a_heads_model_reaches_its_card_part_iou_on_the_validation_split(name, data_dir):
    """card["heads"] holds benchmarks/parts_landmarks.py's figures of the checkpoint scripts/ship_parts.py shipped."""
    card = read_checkpoint(WEIGHTS_DIR / f"{name}.pt")["meta"]["card"]["heads"]
    assert card["split"] == "val"
    scores = repo_script("benchmarks/parts_landmarks.py").part_scores(name, data_dir, "val", None)
    assert scores["images"] == card["parts"]["images"]
    assert scores["mean_iou"] == pytest.approx(card["parts"]["mean_iou"], abs=0.005)


def test_graft_puts_heads_on_the_shipped_trunk_and_overwrites_nothing(tmp_path):
    """scripts/ship_parts.py --graft: the start of retraining the heads after `accurate` is shipped anew."""
    import torch

    graft = repo_script("scripts/ship_parts.py").graft
    trunk = read_checkpoint(WEIGHTS_DIR / "accurate.pt")["state_dict"]
    old = read_checkpoint(WEIGHTS_DIR / "parts.pt")  # made into heads on a trunk that is not accurate's
    old["state_dict"] = {k: v + 1 if k in trunk and v.is_floating_point() else v for k, v in old["state_dict"].items()}
    torch.save(old, tmp_path / "old.pt")
    out = tmp_path / "init.pt"
    assert graft(tmp_path / "old.pt", out) == 0
    made = read_checkpoint(out)["state_dict"]
    assert set(made) == set(old["state_dict"]) and set(trunk) < set(made)
    assert all(torch.equal(made[k].float(), v.float()) for k, v in trunk.items())
    assert all(torch.equal(made[k].float(), v.float()) for k, v in old["state_dict"].items() if k not in trunk)
    before = out.read_bytes()
    with pytest.raises(SystemExit, match="already exists"):
        graft(tmp_path / "old.pt", out)
    assert out.read_bytes() == before
