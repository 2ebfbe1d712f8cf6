import csv
import json
import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from personseg import data
from personseg.data import read_gray
from personseg.config import load_config
from personseg.data import (Composites, CocoPersons, CopyPaste, FolderPairs, LabelMaps, MixSampler, SyntheticClips,
                            build_train_dataset, build_train_sampler, build_val_datasets, split_items)

SIZE = (160, 96)


def check_sample(s, size=SIZE):
    W, H = size
    assert s["image"].shape == (3, H, W) and s["image"].dtype == torch.float32
    assert s["mask"].shape == s["valid"].shape == (1, H, W)
    assert set(s["mask"].unique().tolist()) <= {0.0, 1.0} and set(s["valid"].unique().tolist()) <= {0.0, 1.0}
    assert -3 < s["image"].min() and s["image"].max() < 3  # normalised
    assert isinstance(s["name"], str) and isinstance(s["source"], str)


def test_split_rule_every_tenth_file_is_validation_and_the_fifth_held_back():
    items = [f"{i:03d}" for i in range(25)]
    val, train, held = split_items(items, "val"), split_items(items, "train"), split_items(items, "holdout")
    assert val == ["009", "019"] and held == ["004", "014", "024"]
    assert sorted(train + val + held) == items and not set(train) & set(val + held)
    with pytest.raises(ValueError, match="holdout"):
        split_items(items, "test")


def test_portraits_respect_split_csv(data_dir):
    root = data_dir / "portraits"
    with open(root / "split.csv", newline="") as f:
        not_train = {row["name"] for row in csv.DictReader(f) if row["split"] != "train"}
    train, val = FolderPairs(root, "train", SIZE), FolderPairs(root, "val", SIZE)
    train_stems, val_stems = {p.stem for p, _ in train.pairs}, {p.stem for p, _ in val.pairs}
    assert not_train and not (train_stems & not_train) and not (train_stems & val_stems)
    all_stems = [p.stem for p in data.list_images(root / "images")]
    assert [p.stem for p, _ in val.pairs] == all_stems[9::10]
    check_sample(val[0])
    s = FolderPairs(root, "train", SIZE, augment="mild")[(3, 123)]
    check_sample(s)
    assert s["source"] == "portraits"


def test_hsd_masks_of_another_size_are_resized_and_reported_once(data_dir):
    root = data_dir / "hsd"
    images = data.list_images(root / "images")
    sizes = [(Image.open(p).size, Image.open(root / "masks" / f"{p.stem}.png").size) for p in images]
    mismatched = sum(a != b for a, b in sizes)
    assert mismatched > 0
    data._mask_size_reports.pop(str(root / "masks"), None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = FolderPairs(root, "train", SIZE, limit=4)
        FolderPairs(root, "val", SIZE)
    reports = [str(w.message) for w in caught if "not the size of their image" in str(w.message)]
    assert reports == [f"{root / 'masks'}: {mismatched} of {len(images)} masks are not the size of their image; "
                       "resizing them to the image (nearest neighbour)"]
    index = next(i for i, (p, _) in enumerate(train.pairs) if Image.open(p).size != Image.open(
        root / "masks" / f"{p.stem}.png").size)
    raw = train.load(index, 0)
    assert raw["mask"].shape == raw["image"].shape[:2]
    check_sample(train[index])


def test_ccp_label_maps_give_the_person_mask_and_parts(data_dir):
    from personseg.parts import IGNORE, ccp_parts

    root = data_dir / "ccp"
    ds = LabelMaps(root, "val", SIZE, heads=True, limit=3)
    for i in range(len(ds)):
        s = ds[i]
        check_sample(s)
        assert s["labels"].dtype == torch.int64 and s["labels"].shape == SIZE[::-1]
        inside = s["valid"][0] > 0  # letterbox padding has no part label
        assert torch.equal(s["mask"][0][inside] > 0, s["labels"][inside] != 0) and (s["labels"][~inside] == IGNORE).all()
    assert len(ds.label_names) == 59 and ds.label_names[19] == "hair"
    raw = read_gray(ds.pairs[0][1])
    assert np.array_equal(ds.load(0, 0)["labels"], ccp_parts(raw, ds.label_names))
    assert "labels" not in LabelMaps(root, "val", SIZE, limit=1).load(0, 0)  # only multi-task runs get parts


def test_ccp_empty_mask_is_a_valid_sample(data_dir):
    root = data_dir / "ccp"
    for split in ("train", "val"):
        ds = LabelMaps(root, split, SIZE)
        names = [p.stem for p, _ in ds.pairs]
        if "0536" in names:
            s = ds[names.index("0536")]
            check_sample(s)
            assert s["mask"].sum() == 0 and s["valid"].sum() > 0
            return
    pytest.fail("ccp/0536 (the empty mask) not found")


def write_coco(tmp_path):
    """Two images: the first with a person polygon and a crowd RLE, the second with a person and a dog."""
    from pycocotools import mask as mask_utils

    h, w = 60, 80
    (tmp_path / "images").mkdir()
    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(tmp_path / "images" / name), np.full((h, w, 3), 128, np.uint8))
    crowd = np.zeros((h, w), np.uint8)
    crowd[30:60, 40:80] = 1  # overlaps the person of image a at [30:50, 40:50]
    rle = mask_utils.encode(np.asfortranarray(crowd))
    rle["counts"] = rle["counts"].decode()
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": h, "width": w},
                   {"id": 2, "file_name": "b.jpg", "height": h, "width": w}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 1200, "bbox": [10, 10, 40, 40],
             "segmentation": [[10, 10, 50, 10, 50, 50, 10, 50]]},
            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 1200, "bbox": [40, 30, 40, 30],
             "segmentation": rle},
            {"id": 3, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 100, "bbox": [0, 0, 10, 10],
             "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
            {"id": 4, "image_id": 2, "category_id": 18, "iscrowd": 0, "area": 400, "bbox": [50, 30, 20, 20],
             "segmentation": [[50, 30, 70, 30, 70, 50, 50, 50]]},
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    return tmp_path


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on numpy 2
def test_coco_persons_union_and_crowd_ignored(tmp_path):
    root = write_coco(tmp_path)
    ds = CocoPersons(root / "images", root / "instances.json", "train", size=(80, 60))
    assert len(ds) == 2 and len(CocoPersons(root / "images", root / "instances.json", "val", size=(80, 60))) == 0
    a, b = ds[0], ds[1]
    check_sample(a, (80, 60))
    mask, valid = a["mask"][0], a["valid"][0]
    assert mask[20, 20] == 1 and mask[5, 5] == 0 and valid[20, 20] == 1
    assert valid[55, 70] == 0 and mask[55, 70] == 0  # crowd: ignored, not background
    assert valid[40, 45] == 1 and mask[40, 45] == 1  # a person instance inside the crowd box stays person
    assert valid[5, 70] == 1  # plain background
    assert b["valid"].all() and b["mask"][0, 5, 5] == 1 and b["mask"][0, 40, 60] == 0  # the dog is background


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_copy_paste_pastes_only_the_instance_onto_person_free_photos(tmp_path):
    root = write_coco(tmp_path)
    backgrounds = tmp_path / "empty"
    backgrounds.mkdir()
    cv2.imwrite(str(backgrounds / "room.png"), np.zeros((90, 120, 3), np.uint8))  # black: pasted pixels show
    ds = CopyPaste(root / "images", root / "instances.json", [backgrounds], length=6, min_area=1000,
                   size=(120, 90), val_every=100)
    assert len(ds.instances) == 1  # the crowd region, the small person and the dog are not pasted
    for i in range(len(ds)):
        raw = ds.load(i, seed=i)
        assert raw["image"].shape == (90, 120, 3) and raw["mask"].any()
        inside = raw["image"][raw["mask"] > 0]
        assert (inside > 100).all()  # the instance's grey pixels, nothing of the black background
        assert (raw["image"][cv2.dilate(raw["mask"], np.ones((5, 5), np.uint8)) == 0] == 0).all()
        check_sample(ds[i], (120, 90))


@pytest.fixture(scope="module")
def composites(data_dir):
    root = data_dir / "composites"
    return Composites(root / "foregrounds", root / "backgrounds", length=20, size=SIZE, augment="none",
                      return_alpha=True)


def test_composite_mask_is_thresholded_alpha_where_cutouts_landed(composites):
    composites.min_people = composites.max_people = 1
    try:
        scene = composites.render(seed=5)
    finally:
        composites.min_people, composites.max_people = 1, 4
    (x, y, patch), = scene["layers"]
    alpha = scene["alpha"]
    H, W = alpha.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + patch.shape[1], W), min(y + patch.shape[0], H)
    assert np.array_equal(alpha[y0:y1, x0:x1], patch[y0 - y:y1 - y, x0 - x:x1 - x])
    outside = np.ones_like(alpha, bool)
    outside[y0:y1, x0:x1] = False
    assert (alpha[outside] == 0).all() and alpha.max() > 0.9
    assert 0 < ((alpha > 0) & (alpha < 1)).sum()  # the blurred, soft edge


def test_composite_samples_are_deterministic_and_consistent(composites):
    for seed in (1, 2, 3):
        scene = composites.render(seed)
        for x, y, patch in scene["layers"]:  # the union of alphas covers every pasted cut-out
            H, W = scene["alpha"].shape
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + patch.shape[1], W), min(y + patch.shape[0], H)
            assert (scene["alpha"][y0:y1, x0:x1] >= patch[y0 - y:y1 - y, x0 - x:x1 - x] - 1e-6).all()
    a, b, c = composites[(3, 77)], composites[(3, 77)], composites[(3, 78)]
    check_sample(a)
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    assert torch.equal(a["mask"] > 0, a["alpha"] > 0.5)


def test_synthetic_clips_move_smoothly(data_dir):
    still = FolderPairs(data_dir / "portraits", "val", SIZE, limit=2)
    clips = SyntheticClips(still, length=5, seed=1)
    c = clips[0]
    assert c["frames"].shape == (5, 3, SIZE[1], SIZE[0]) and c["masks"].shape == (5, 1, SIZE[1], SIZE[0])
    assert set(c["masks"].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(clips[0]["frames"], c["frames"])
    steps = (c["frames"][1:] - c["frames"][:-1]).abs().mean((1, 2, 3))
    assert (steps > 0).all()  # it moves every frame
    area = c["masks"].mean((1, 2, 3))
    assert (area[1:] - area[:-1]).abs().max() < 0.05  # smoothly
    jittered = SyntheticClips(still, length=5, seed=1, jitter=0.3)[0]
    assert torch.equal(jittered["masks"], c["masks"])  # the same motion, another look per frame
    assert torch.equal(jittered["frames"], SyntheticClips(still, length=5, seed=1, jitter=0.3)[0]["frames"])
    change = (jittered["frames"] - c["frames"]).abs().mean((1, 2, 3))
    assert (change > 0.02).all() and change.std() > 0  # every frame changed, each its own way


def test_mix_sampler_shards_ranks_and_follows_weights():
    sizes, weights = [5, 7, 3], [1.0, 1.0, 2.0]
    single = list(MixSampler(sizes, weights, 40, seed=3))
    ranks = [list(MixSampler(sizes, weights, 40, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert ranks[0] == single[0::2] and ranks[1] == single[1::2]
    s = MixSampler(sizes, weights, 40, seed=3)
    s.set_epoch(0, skip=7)
    assert list(s) == single[7:] and len(s) == 33
    s.set_epoch(1)
    assert list(s) != single
    big = list(MixSampler(sizes, weights, 4000, seed=0))
    share = np.bincount([src for src, *_ in big]) / len(big)
    assert np.allclose(share, [0.25, 0.25, 0.5], atol=0.03)
    first = [i for src, i, *_ in big if src == 1][:7]
    assert sorted(first) == list(range(7))  # every item once before any repeats
    assert not any(tall for *_, tall in big)  # tall_share 0: every batch at the input size


def test_mix_sampler_draws_one_orientation_per_batch():
    draws = list(MixSampler([50], [1.0], 4000, seed=1, batch_size=8, tall_share=0.3))
    talls = np.array([tall for *_, tall in draws]).reshape(-1, 8)
    assert (talls == talls[:, :1]).all()
    assert abs(talls[:, 0].mean() - 0.3) < 0.06
    resumed = MixSampler([50], [1.0], 4000, seed=1, batch_size=8, tall_share=0.3)
    resumed.set_epoch(0, skip=16)
    assert list(resumed) == draws[16:]


def test_person_free_composites(data_dir, tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data:\n  input_size: [160, 96]\n  sources:\n"
                        "    - {name: empty, kind: composites, path: composites, people: [0, 0], length: 20}\n")
    cfg = load_config(cfg_file, [f"data.root={data_dir}"])
    train = build_train_dataset(cfg)
    assert all(train[(0, i, seed, False)]["mask"].sum() == 0 for i, seed in [(0, 1), (3, 2), (7, 3)])
    with pytest.raises(ValueError, match="people"):
        load_config(cfg_file, ["data.sources.0.people=[2, 1]"])


def test_decoys_are_background_and_hide_the_people_they_cover(data_dir, tmp_path):
    root = data_dir / "composites"
    plain = Composites(root / "foregrounds", root / "backgrounds", size=SIZE, augment="none")
    decoyed = Composites(root / "foregrounds", root / "backgrounds", size=SIZE, augment="none", decoys=(3, 3))
    only = Composites(root / "foregrounds", root / "backgrounds", size=SIZE, augment="none", min_people=0,
                      max_people=0, decoys=(2, 2))
    for seed in range(6):
        scene = only.render(seed)
        assert scene["alpha"].max() == 0 and not scene["layers"]  # objects only: no person pixel
        assert not np.array_equal(scene["image"], plain.render(seed)["image"])
    hidden = 0
    for seed in range(20):  # people pasted under a decoy lose what it covers
        scene = decoyed.render(seed)
        for x, y, patch in scene["layers"]:
            H, W = scene["alpha"].shape
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + patch.shape[1], W), min(y + patch.shape[0], H)
            hidden += np.count_nonzero(scene["alpha"][y0:y1, x0:x1] < patch[y0 - y:y1 - y, x0 - x:x1 - x] - 0.5)
    assert hidden > 0
    assert np.array_equal(decoyed.render(4)["image"], decoyed.render(4)["image"])
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data:\n  sources:\n    - {name: c, kind: composites, path: composites, decoys: [1, 2]}\n")
    assert tuple(load_config(cfg_file, []).data.sources[0].decoys) == (1, 2)
    with pytest.raises(ValueError, match="decoys"):
        load_config(cfg_file, ["data.sources.0.decoys=[3, 1]"])


def test_tall_samples_and_orientation_aware_validation(data_dir):
    ds = LabelMaps(data_dir / "ccp", size=(160, 96), augment="mild", limit=2)
    assert ds[(0, 5, False)]["image"].shape == (3, 96, 160)
    tall = ds[(0, 5, True)]
    assert tall["image"].shape == (3, 160, 96) and tall["mask"].shape == (1, 160, 96)
    assert tall["mask"].mean() > 0.1  # the crop still follows the person
    val = LabelMaps(data_dir / "ccp", split="val", size=(160, 96), limit=1, orient_val=True)
    assert val[0]["image"].shape == (3, 160, 96)  # ccp photos are taller than wide
    assert LabelMaps(data_dir / "ccp", split="val", size=(160, 96), limit=1)[0]["image"].shape == (3, 96, 160)


def test_build_datasets_from_config(data_dir):
    cfg = load_config(None, [f"data.root={data_dir}", "data.input_size=[160,96]", "data.val_limit=2"]
                      + [f"data.sources.{i}.limit=6" for i in range(4)])
    train = build_train_dataset(cfg)
    assert [d.source for d in train.datasets] == ["portraits", "ccp", "hsd", "composites"]
    sampler = build_train_sampler(train, cfg)
    keys = list(sampler)[:6]
    train.set_sdm(True)
    for key in keys:
        s = train[key]
        check_sample(s)
        assert s["sdm"].shape == s["mask"].shape
    val = build_val_datasets(cfg)
    assert list(val) == ["portraits", "ccp", "hsd", "composites"] and all(len(v) == 2 for v in val.values())
    for name in ("portraits", "ccp", "hsd"):
        full_train = data.build_source(cfg.data.sources[[s.name for s in cfg.data.sources].index(name)],
                                       load_config(None, [f"data.root={data_dir}"]), "train")
        assert not {p.stem for p, _ in full_train.pairs} & {p.stem for p, _ in val[name].pairs}


# ------------------------------------------------------------------------- hostile inputs (issue 13)

def hostile_folder(root):
    """images/ + masks/: three good pairs, a corrupt image, a mask of another aspect ratio, one resized."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, mask_size in [("a", (60, 40)), ("b", (30, 20)), ("c", (60, 40)), ("d", (60, 40)), ("e", (40, 40))]:
        Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(root / "images" / f"{name}.jpg")
        Image.fromarray(np.full(mask_size[::-1], 255, np.uint8)).save(root / "masks" / f"{name}.png")
    (root / "images" / "d.jpg").write_bytes(b"not a jpeg")
    return root


def test_corrupt_and_stretched_pairs_are_skipped_and_named(tmp_path):
    root = hostile_folder(tmp_path / "hostile")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, val = FolderPairs(root, "train", SIZE), FolderPairs(root, "val", SIZE)
    names = sorted(p.stem for p, _ in train.pairs + val.pairs)
    assert names == ["a", "b", "c"]
    message = next(str(w.message) for w in caught if "skipping" in str(w.message))
    assert "d.jpg" in message and "unreadable" in message and "e.png" in message and "aspect ratio" in message
    assert train[0]["mask"].shape[-2:] == (SIZE[1], SIZE[0])


def test_an_empty_training_folder_is_named_before_training(tmp_path):
    from personseg.data import build_train_dataset

    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  root: {tmp_path}\n  sources:\n    - {{name: empty, kind: folder, path: empty}}\n")
    with pytest.raises(ValueError, match="data source empty .*no usable training samples"):
        build_train_dataset(load_config(recipe, ["data.samples_per_epoch=100"]))


def test_mask_value_128_is_dont_care_in_training_as_in_eval_and_data_check(tmp_path):
    """The data-folder contract: 0 background, 255 person, 128 don't-care, for every reader."""
    from personseg.data_tools import check_folder
    from personseg.evaluate import evaluate_folders
    from personseg.folders import decode_mask

    mask, valid = decode_mask(np.array([[0, 127, 128, 129, 255]], np.uint8))
    assert mask.tolist() == [[0, 0, 0, 1, 1]] and valid.tolist() == [[1, 1, 0, 1, 1]]

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    gray = np.zeros((48, 64), np.uint8)
    gray[:, 32:] = 128  # right half: don't care
    gray[10:30, 5:20] = 255
    for i in range(10):
        Image.fromarray(np.full((48, 64, 3), 40 * (i % 5), np.uint8)).save(tmp_path / "images" / f"{i:02d}.png")
        Image.fromarray(gray).save(tmp_path / "masks" / f"{i:02d}.png")
    sample = FolderPairs(tmp_path, "val", (64, 48))[0]
    assert sample["valid"][0, :, 32:].sum() == 0 and sample["mask"][0, :, 32:].sum() == 0
    assert sample["valid"][0, :, :32].min() == 1 and sample["mask"].sum() == 20 * 15
    assert not check_folder(tmp_path).findings  # 128 is a legal value

    class CallsTheRightHalfPerson:
        threshold = 0.5

        def predict(self, rgb):
            alpha = np.zeros(rgb.shape[:2], np.float32)
            alpha[10:30, 5:20] = 1
            alpha[:, 32:] = 1  # all in the don't-care half: counts neither way
            return alpha

    result = evaluate_folders(CallsTheRightHalfPerson(), [tmp_path], "val")
    assert result["overall"]["iou"] == 1.0


def test_eval_split_follows_val_every_and_split_csv(tmp_path):
    from personseg.evaluate import list_pairs

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(12):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / f"{i:02d}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / f"{i:02d}.png")
    (tmp_path / "split.csv").write_text("name,split\n00,none\n01,train\n")
    stems = lambda split, **kw: [p.stem for p, _ in list_pairs(tmp_path, split, **kw)]  # noqa: E731
    assert stems("val") == ["09"] and stems("val", val_every=4) == ["03", "07", "11"]
    assert "00" not in stems("train") and "01" in stems("train")
    assert stems("train") == [p.stem for p, _ in FolderPairs(tmp_path, "train", (8, 8)).pairs]


def test_a_corrupt_coco_photo_or_background_is_skipped_with_a_warning(tmp_path):
    (tmp_path / "coco").mkdir()
    root = write_coco(tmp_path / "coco")
    (root / "images" / "b.jpg").write_bytes(b"not a jpeg")
    data._opens.clear()
    with pytest.warns(UserWarning, match="skipping 1 unreadable image: b.jpg"):
        ds = CocoPersons(root / "images", root / "instances.json", "val", SIZE, val_every=1)
    assert [ds.coco.imgs[i]["file_name"] for i in ds.ids] == ["a.jpg"]
    check_sample(ds[0])
    backgrounds = tmp_path / "backgrounds"
    backgrounds.mkdir()
    cv2.imwrite(str(backgrounds / "good.png"), np.zeros((50, 70, 3), np.uint8))
    (backgrounds / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(UserWarning, match="bad.png"):
        paste = CopyPaste(root / "images", root / "instances.json", [backgrounds], length=2, split="val",
                          val_every=1, size=SIZE, min_area=100)
    assert [p.name for p in paste.backgrounds] == ["good.png"]
    check_sample(paste[0])
