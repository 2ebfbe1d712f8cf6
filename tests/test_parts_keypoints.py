"""Body parts (personseg.parts) and landmarks (personseg.keypoints): label mapping, heatmap round trip."""
import numpy as np
import pytest

from personseg import keypoints, parts


def ccp_names(data_dir):
    lines = (data_dir / "ccp" / "label_names.txt").read_text().splitlines()
    return [line.split(maxsplit=1)[1] for line in lines if line.strip()]


def test_every_ccp_label_is_assigned_exactly_once(data_dir):
    names = ccp_names(data_dir)
    groups = [("null",), ("hair",), ("skin",), parts.CLOTHES, parts.ACCESSORIES]
    counts = {n: sum(n in g for g in groups) for n in names}
    assert all(c == 1 for c in counts.values()), {n: c for n, c in counts.items() if c != 1}
    assert set(names) == {n for g in groups for n in g}  # no class lists a name ccp lacks
    lut = parts.ccp_lookup(names)
    assert lut[names.index("hair")] == 1 and lut[names.index("skin")] == parts.BODY_SKIN
    assert lut[names.index("sneakers")] == parts.CLOTHES_ID and lut[names.index("sunglasses")] == parts.ACCESSORIES_ID
    with pytest.raises(ValueError, match="no part class: tail"):
        parts.ccp_lookup(names + ["tail"])


def test_skin_above_the_collar_is_face():
    names = ["null", "hair", "skin", "shirt", "pants"]
    labels = np.zeros((10, 4), np.uint8)
    labels[0] = 1            # hair
    labels[1:3] = 2          # face and neck
    labels[3:6, 1:3] = 3     # shirt: the collar line is row 3
    labels[3:6, 0] = 2       # an arm
    labels[6:] = 4           # pants
    p = parts.ccp_parts(labels, names)
    assert (p[1:3] == parts.FACE_SKIN).all() and (p[3:6, 0] == parts.BODY_SKIN).all()
    assert (p[0] == parts.HAIR).all() and (p[6:] == parts.CLOTHES_ID).all()
    assert parts.colorize(p).shape == (10, 4, 3)


def test_heatmaps_of_known_points_decode_to_those_points():
    rng = np.random.default_rng(0)
    size = (180, 320)
    people = np.zeros((1, 17, 3), np.float32)
    people[0, :, 0] = rng.uniform(10, 310, 17)
    people[0, :, 1] = rng.uniform(10, 170, 17)
    people[0, :, 2] = 2
    people[0, 3, 2] = 0  # not labelled: an empty channel
    maps = keypoints.render_heatmaps(people, size)
    assert maps.shape == (17, 45, 80) and maps[3].max() == 0
    decoded = keypoints.decode(maps)
    labelled = people[0, :, 2] > 0
    error = np.abs(decoded[labelled, :2] - people[0, labelled, :2]).max(1)
    inside = ((people[0, labelled, :2] >= 8 * keypoints.STRIDE) &
              (people[0, labelled, :2] <= np.float32(size[::-1]) - 8 * keypoints.STRIDE)).all(1)
    assert inside.sum() >= 8 and error[inside].max() < 0.05, error  # DARK's step is exact on a Gaussian
    assert error.max() < 1.0, error  # near the border too, under the quarter-pixel rule's resolution (1.5)
    assert (decoded[labelled, 2] > 0.8).all()


def test_heatmaps_of_a_mirrored_picture_unmirror_onto_the_pictures_own():
    rng = np.random.default_rng(1)
    size = (384, 216)
    people = np.zeros((1, 17, 3), np.float32)
    people[0, :, 0], people[0, :, 1], people[0, :, 2] = rng.uniform(5, 211, 17), rng.uniform(5, 379, 17), 2
    mirrored = people.copy()
    mirrored[0, :, 0] = size[1] - people[0, :, 0]  # x -> W - x (pixel edges at 0 and W)
    mirrored = mirrored[:, list(keypoints.FLIP)]  # the person's left joint is now on the picture's right
    back = keypoints.unmirror(keypoints.render_heatmaps(mirrored, size))
    np.testing.assert_allclose(back, keypoints.render_heatmaps(people, size), atol=1e-5)


def test_crop_and_uncrop_map_points_both_ways():
    window = keypoints.crop_window((50, 40, 90, 160), (384, 216))  # a tall box, a tall crop
    x0, y0, k = window
    assert (x0 + 216 / k / 2, y0 + 384 / k / 2) == pytest.approx((70, 100))  # centred on the box
    assert 384 / k == pytest.approx(120 * keypoints.CROP_PAD)  # the box's height grown by CROP_PAD
    picture = np.zeros((200, 300, 3), np.uint8)
    picture[99:102, 69:72] = 255  # a dot centred on (70.5, 100.5) in pixel-centre coordinates
    patch = keypoints.crop(picture, window, (384, 216))
    ys, xs = np.nonzero(patch[..., 0] > 127)  # the dot, about 3 k pixels wide in the crop
    centre = np.float32([[xs.mean() + 0.5, ys.mean() + 0.5]])
    assert keypoints.uncrop(centre, window)[0] == pytest.approx((70.5, 100.5), abs=0.1)


def test_two_people_are_read_top_down_from_crops_of_their_regions():
    """Each person's 17 joints are 5x5 squares of their own red level; the stand-in network finds them
    in whatever crop it gets and answers heatmaps there, so only the crop bookkeeping is tested."""
    levels = np.arange(17) * 14 + 10
    picture, mask = np.zeros((300, 400, 3), np.uint8), np.zeros((300, 400), bool)
    truth = []
    for x0 in (40, 240):
        xs, ys = np.linspace(x0 + 10, x0 + 90, 17).round(), np.linspace(20, 270, 17).round()
        for level, x, y in zip(levels, xs.astype(int), ys.astype(int)):
            picture[y - 2:y + 3, x - 2:x + 3] = (level, 255, 0)
        mask[10:280, x0:x0 + 100] = True
        truth.append(np.stack([xs + 0.5, ys + 0.5], 1))
    size, calls = (384, 216), []

    def heatmaps_of(patch):
        calls.append(patch.shape)
        marked = patch[..., 1] > 250
        found = np.zeros((1, 17, 3), np.float32)
        for k, level in enumerate(levels):
            ys, xs = np.nonzero(marked & (np.abs(patch[..., 0].astype(int) - level) <= 3))
            if len(xs):  # a joint of the person in the crop's middle, or of the other one at its edge
                centre = np.abs(xs - patch.shape[1] / 2) < patch.shape[1] / 4
                xs, ys = (xs[centre], ys[centre]) if centre.any() else (xs, ys)
                found[0, k] = xs.mean() + 0.5, ys.mean() + 0.5, 2
        return keypoints.render_heatmaps(found, size)

    people = keypoints.top_down(picture, mask, heatmaps_of, size)
    assert len(people) == 2 and calls == [(384, 216, 3)] * 2
    people.sort(key=lambda p: p["box"][0])
    for person, expected in zip(people, truth):
        assert np.abs(person["keypoints"][:, :2] - expected).max() <= 2.0  # a heatmap pixel is ~1.5 picture pixels
        assert person["keypoints"][:, 2].min() > 0.9
    coco = keypoints.to_coco(people, image_id=7)
    assert len(coco[0]["keypoints"]) == 51 and coco[0]["category_id"] == 1 and coco[0]["image_id"] == 7
    assert keypoints.draw_skeleton(np.zeros((300, 400, 3), np.uint8), people).any()


def test_coco_person_crops_put_that_persons_joints_where_inference_crops_them(data_dir):
    from personseg.data import CocoPersonCrops

    people = CocoPersonCrops(data_dir / "coco" / "images", data_dir / "coco" / "annotations.json", "val",
                             size=(384, 216), heads=True, orient_val=True)
    for i in range(0, len(people), 15):
        sample = people[i]
        _, ann = people.people[i]
        x, y, w, h = ann["bbox"]
        window = keypoints.crop_window((x, y, x + w, y + h), (384, 216))
        assert sample["image"].shape == (3, 384, 216) and sample["heatmaps"].shape == (17, 96, 54)
        truth = np.asarray(ann["keypoints"], np.float32).reshape(17, 3)
        found = keypoints.uncrop(keypoints.decode(sample["heatmaps"].numpy()), window)
        labelled = (truth[:, 2] > 0) & (found[:, 2] > 0.5)  # a joint outside the crop has no peak
        assert labelled.sum() >= 0.8 * (truth[:, 2] > 0).sum()
        error = np.abs(found[labelled, :2] - truth[labelled, :2]).max()
        assert error <= 3 / window[2]  # within a heatmap pixel (4 / k picture pixels), quarter-pixel refined
        others = sample["heatmap_weight"][0] == 0  # the other people's pixels are don't-care
        assert not others.all()


def test_the_heads_own_decoder_starts_as_the_trunk_decoder_and_feeds_the_heads():
    torch = pytest.importorskip("torch")
    from personseg.models.multitask import MultiTaskUNet

    torch.manual_seed(0)
    model = MultiTaskUNet(alpha=0.35, heads_decoder=True).eval()
    x = torch.rand(1, 3, 64, 96)
    before = model(x)
    model.init_fresh([k for k in model.state_dict() if k.startswith("heads_decoder.")])
    trunk, own = model.decoder.state_dict(), model.heads_decoder.state_dict()
    assert trunk.keys() == own.keys() and all(torch.equal(trunk[k], own[k]) for k in trunk)
    after = model(x)
    assert torch.equal(before[0], after[0])  # the person mask does not read it
    assert not torch.equal(before[2], after[2])  # the heads do
    assert after[1].shape == (1, 6, 64, 96) and after[2].shape == (1, 17, 16, 24)


@pytest.fixture(scope="module")
def tiny_multitask(tmp_path_factory):
    """A small multi-task checkpoint with random weights and its ONNX export."""
    torch = pytest.importorskip("torch")
    from personseg.checkpoint import save_checkpoint
    from personseg.export import export_onnx
    from personseg.models import create_model

    torch.manual_seed(0)
    kwargs = {"alpha": 0.35}
    model = create_model("multitask_unet_mobilenet_v2", **kwargs).eval()
    with torch.no_grad():
        model.head.bias.fill_(3.0)  # everything is person: the part map and skeletons then have somewhere to be
    folder = tmp_path_factory.mktemp("multitask")
    save_checkpoint(folder / "m.pt", model, arch="multitask_unet_mobilenet_v2", model_kwargs=kwargs,
                    input_size=(160, 96))
    from personseg.checkpoint import load_checkpoint
    info = load_checkpoint(folder / "m.pt")[1]
    export_onnx(model, info, folder / "m.onnx", check_sizes=[(1, 96, 160), (1, 75, 131)])
    return folder


def test_segment_writes_parts_and_landmarks_in_the_documented_formats(tiny_multitask, tmp_path):
    import json

    from PIL import Image

    from personseg.cli import main
    from personseg.parts import PALETTE

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 90, 3), dtype=np.uint8)).save(photo)
    for model in ("m.pt", "m.onnx"):
        out = tmp_path / model
        assert main(["segment", str(photo), "-o", str(out), "--model", str(tiny_multitask / model),
                     "--save", "mask,parts,landmarks", "--quiet"]) == 0
        parts = np.array(Image.open(out / "photo_parts.png"))
        assert parts.shape == (120, 90) and parts.dtype == np.uint8 and parts.max() <= 5
        color = np.array(Image.open(out / "photo_parts_color.png"))
        assert color.shape == (120, 90, 3) and np.array_equal(color, PALETTE[parts])
        found = json.loads((out / "photo_landmarks.json").read_text())
        assert len(found["keypoints"]) == 17 and len(found["people"]) == 1
        person = found["people"][0]
        assert len(person["keypoints"]) == 51 and person["category_id"] == 1
        xs, ys = person["keypoints"][0::3], person["keypoints"][1::3]
        assert 0 <= min(xs) and max(xs) <= 90 and 0 <= min(ys) and max(ys) <= 120
        assert np.array(Image.open(out / "photo_skeleton.jpg")).shape == (120, 90, 3)


def test_a_model_without_heads_refuses_parts_in_one_line(tiny_checkpoint, tmp_path, capsys):
    from PIL import Image

    from personseg.cli import main

    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(photo)
    assert main(["segment", str(photo), "-o", str(tmp_path / "o"), "--model", str(tiny_checkpoint),
                 "--save", "landmarks"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model parts" in err[0] and not (tmp_path / "o" / "photo_landmarks.json").exists()


def test_video_writes_one_smoothed_landmark_line_per_frame(tiny_multitask, tmp_path):
    import json

    from PIL import Image

    from personseg.cli import main

    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)).save(frames / f"{i:05d}.png")
    jsonl = tmp_path / "skeletons.jsonl"
    assert main(["video", str(frames), "-o", str(tmp_path / "out.mp4"), "--model", str(tiny_multitask / "m.onnx"),
                 "--save-landmarks", str(jsonl), "--quiet"]) == 0
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [line["frame"] for line in lines] == [0, 1, 2, 3]
    assert all(len(p["keypoints"]) == 51 for line in lines for p in line["people"])
    assert main(["video", str(frames), "-o", str(tmp_path / "again.mp4"), "--model", str(tiny_multitask / "m.onnx"),
                 "--save-landmarks", str(jsonl), "--quiet"]) == 2  # kept unless --overwrite


def test_landmark_smoothing_moves_keypoints_part_of_the_way():
    from personseg.video.tracking import LandmarkRecorder

    class Heads:
        has_heads = True

    recorder = LandmarkRecorder(Heads(), smoothing=0.5)
    k0 = np.tile([10.0, 10.0, 0.9], (17, 1)).astype(np.float32)
    first = recorder._smooth([{"keypoints": k0, "box": (0, 0, 40, 80), "score": 0.9}], [])
    k1 = k0.copy()
    k1[:, 0] += 4
    second = recorder._smooth([{"keypoints": k1, "box": (4, 0, 44, 80), "score": 0.9}], first)
    assert np.allclose(second[0]["keypoints"][:, 0], 12.0)  # half way from 10 to 14
    far = recorder._smooth([{"keypoints": k1 + 300, "box": (300, 300, 340, 380), "score": 0.9}], first)
    assert np.allclose(far[0]["keypoints"][:, 0], k1[:, 0] + 300)  # another person: no smoothing
