import pickle

import numpy as np
import pytest
import torch

import personseg
from personseg.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from personseg.models import create_model
from personseg.predict import InputSpec, Predictor, keep_largest, model_size


@pytest.fixture()
def tiny(tmp_path):
    torch.manual_seed(0)
    model = create_model("unet_mobilenet_v3", alpha=0.25, decoder_channels=(32, 16, 16, 8, 8)).eval()
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, model, arch="unet_mobilenet_v3",
                    model_kwargs={"alpha": 0.25, "decoder_channels": [32, 16, 16, 8, 8]},
                    input_size=(96, 64), threshold=0.4, meta={"epoch": 3, "val": {"iou": 0.5}})
    return model, path


def test_round_trip_rebuilds_the_same_function(tiny):
    model, path = tiny
    loaded, info = load_checkpoint(path)
    assert info["arch"] == "unet_mobilenet_v3" and info["input_size"] == [96, 64]
    assert info["threshold"] == 0.4 and info["meta"]["val"]["iou"] == 0.5
    x = torch.randn(2, 3, 50, 70)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_checkpoint_loads_with_weights_only(tiny):
    ckpt = torch.load(tiny[1], weights_only=True)
    assert ckpt["format"] == "personseg-checkpoint"


def test_half_precision_checkpoint(tmp_path, tiny):
    model, _ = tiny
    path = tmp_path / "half.pt"
    save_checkpoint(path, model, arch="unet_mobilenet_v3",
                    model_kwargs={"alpha": 0.25, "decoder_channels": [32, 16, 16, 8, 8]}, half=True)
    assert read_checkpoint(path)["state_dict"]["head.weight"].dtype == torch.float16
    loaded, _ = load_checkpoint(path)
    assert loaded.head.weight.dtype == torch.float32


def test_not_a_checkpoint_gets_a_clear_error(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pt"):
        personseg.load(text)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a personseg checkpoint"):
        personseg.load(plain)
    with pytest.raises(CheckpointError, match="no such model file"):
        personseg.load(tmp_path / "missing.pt")


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "personseg-checkpoint", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        personseg.load(path)


@pytest.mark.parametrize("refine", [True, False])
def test_predictor_shape_and_range(tiny, refine):
    seg = personseg.load(tiny[1], refine=refine)
    assert seg.threshold == 0.4
    rng = np.random.default_rng(0)
    for shape in [(181, 317, 3), (64, 96, 3), (300, 120, 3)]:
        alpha = seg.predict(rng.integers(0, 256, shape, dtype=np.uint8))
        assert alpha.shape == shape[:2] and alpha.dtype == np.float32
        assert 0 <= alpha.min() and alpha.max() <= 1
    mask = seg.predict_mask(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}


def test_batch_equals_single(tiny):
    seg = personseg.load(tiny[1], refine=False)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(90, 160, 3), (120, 80, 3), (90, 160, 3)]]
    batched = seg.predict_batch(images, batch_size=2)
    for image, alpha in zip(images, batched):
        np.testing.assert_allclose(alpha, seg.predict(image), atol=1e-5)



def test_tta_averages_the_image_and_its_mirror(tiny, tmp_path):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)  # the model's own size: no upsampling
    plain = personseg.load(tiny[1])
    assert not plain.tta  # a checkpoint without meta["tta"]
    mirrored = plain.predict(np.ascontiguousarray(image[:, ::-1]))[:, ::-1]
    assert not np.allclose(plain.predict(image), mirrored, atol=1e-3)  # not flip-symmetric by itself
    averaged = personseg.load(tiny[1], tta=True).predict(image)
    np.testing.assert_allclose(averaged, (plain.predict(image) + mirrored) / 2, atol=1e-5)
    model, info = load_checkpoint(tiny[1])
    path = tmp_path / "tta.pt"
    save_checkpoint(path, model, meta={"tta": True}, **{k: info[k] for k in (
        "arch", "model_kwargs", "input_size", "mean", "std", "threshold")})
    assert personseg.load(path).tta and not personseg.load(path, tta=False).tta


def test_keep_largest_drops_the_smaller_regions_but_not_the_soft_edge():
    alpha = np.zeros((100, 200), np.float32)
    alpha[20:80, 20:90] = 1.0  # the main person
    alpha[20:80, 19] = 0.3  # its soft edge, below the threshold
    alpha[30:60, 150:170] = 0.9  # a bystander
    alpha[5, 195] = 0.2  # a faint speck far away
    kept = keep_largest(alpha, 0.5)
    np.testing.assert_array_equal(kept[:, :100], alpha[:, :100])
    assert kept[:, 100:].max() == 0
    np.testing.assert_array_equal(keep_largest(alpha[:, :100], 0.5), alpha[:, :100])  # one region: as it was


class TwoBlobs(torch.nn.Module):
    """A stand-in model whose logits show a large person on the left and a small one on the right."""

    def forward(self, x):
        logits = torch.full((x.shape[0], 1, *x.shape[2:]), -10.0)
        h, w = x.shape[2:]
        logits[..., h // 4:, : w // 2] = 10.0
        logits[..., h // 2:, 3 * w // 4:] = 10.0
        return logits


def test_predictor_keep_largest():
    image = np.zeros((64, 96, 3), np.uint8)
    both = Predictor(TwoBlobs(), spec=InputSpec((96, 64))).predict_mask(image)
    largest = Predictor(TwoBlobs(), spec=InputSpec((96, 64)), keep="largest").predict_mask(image)
    assert both[:, 80:].any() and not largest[:, 80:].any()
    np.testing.assert_array_equal(largest[:, :48], both[:, :48])
    with pytest.raises(ValueError, match="largest"):
        Predictor(TwoBlobs(), keep="main")


class ConfidentAndWeak(torch.nn.Module):
    """A stand-in model: a confident person on the left (probability 0.99), a weak blob on the right (0.8)."""

    def forward(self, x):
        logits = torch.full((x.shape[0], 1, *x.shape[2:]), -10.0)
        h, w = x.shape[2:]
        logits[..., h // 4:, : w // 2] = 4.6
        logits[..., h // 2:, 3 * w // 4:] = 1.4
        return logits


def test_predictor_region_filter_from_the_model_description_and_overridden():
    from personseg.regions import RegionFilter

    image, spec = np.zeros((64, 96, 3), np.uint8), InputSpec((96, 64))
    plain = Predictor(ConfidentAndWeak(), spec=spec).predict_mask(image)
    assert plain[:, 80:].any()  # no filter in the description: both regions
    meta = {"meta": RegionFilter(level=0.95).metadata()}  # a checkpoint's meta, as JSON text
    filtered = Predictor(ConfidentAndWeak(), spec=spec, info=meta).predict_mask(image)
    assert not filtered[:, 80:].any()
    np.testing.assert_array_equal(filtered[:, :48], plain[:, :48])
    off = Predictor(ConfidentAndWeak(), spec=spec, info=meta, regions=RegionFilter()).predict_mask(image)
    np.testing.assert_array_equal(off, plain)
    with pytest.raises(ValueError, match="region_filter"):
        Predictor(ConfidentAndWeak(), spec=spec, info={"meta": {"region_filter": '{"level": 2}'}})


def test_predictor_rejects_wrong_arrays(tiny):
    seg = personseg.load(tiny[1])
    with pytest.raises(ValueError, match="uint8"):
        seg.predict(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        seg.predict(np.zeros((10, 10, 3), np.float32))


def test_model_size_keeps_pixel_budget_and_aspect():
    h, w = model_size(800, 600, (320, 180))
    assert abs(h * w - 320 * 180) < 400 and abs(h / w - 800 / 600) < 0.01
    assert model_size(1080, 1920, (320, 180)) == (180, 320)


SHIPPED_ONNX = [name for name in personseg.predict.shipped_models()
                if (personseg.predict.WEIGHTS_DIR / f"{name}.onnx").exists()]


@pytest.mark.parametrize("name", SHIPPED_ONNX)
def test_shipped_onnx_is_its_checkpoint(name, data_dir):
    """personseg/weights/NAME.onnx (what load(NAME) runs) predicts as NAME.pt, the training checkpoint:
    alpha within 1e-3 for fp32, masks agreeing for int8; made from this very .pt (sha256)."""
    from personseg.imageio import list_inputs, read_image
    from personseg.predict import WEIGHTS_DIR, file_sha256

    shipped, eager = personseg.load(name), personseg.load(name, backend="torch")
    assert shipped.backend == "onnx" and eager.backend == "torch"
    assert shipped.info["source_sha256"] == file_sha256(WEIGHTS_DIR / f"{name}.pt"), \
        f"{name}.onnx is stale: python scripts/ship_onnx.py {name}"
    eager.tta = shipped.tta
    for path in [p for f in ("portraits", "coco") for p in list_inputs([str(data_dir / f / "images")])[:2]]:
        rgb = read_image(path)
        a, b = shipped.predict(rgb), eager.predict(rgb)
        if shipped.info["precision"] == "fp32":
            assert np.abs(a - b).max() < 1e-3, path
        else:
            ma, mb = a >= shipped.threshold, b >= shipped.threshold
            assert (ma & mb).sum() / max(1, (ma | mb).sum()) > 0.97, path


# ------------------------------------------------------------------------- hostile inputs (issue 13)

def rewritten(tiny, tmp_path, name="bad.pt", **changes):
    """The tiny checkpoint with some fields replaced (None deletes one), re-saved weights-only."""
    ckpt = torch.load(tiny[1], weights_only=True)
    for key, value in changes.items():
        if value is None:
            del ckpt[key]
        else:
            ckpt[key] = value
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


def test_settings_that_do_not_fit_the_weights_are_refused_before_allocating(tiny, tmp_path):
    import resource

    path = rewritten(tiny, tmp_path, model_kwargs={"alpha": 60.0, "decoder_channels": [32, 16, 16, 8, 8]})
    assert path.stat().st_size < 2_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 300_000  # the model is GBs


@pytest.mark.parametrize("changes, message", [
    ({"arch": None}, "arch is missing"),
    ({"arch": "resnet9000"}, "not a known model"),
    ({"state_dict": {"head.weight": [1, 2, 3]}}, "not a dict of named tensors"),
    ({"input_size": [0, 0]}, "input_size"),
    ({"threshold": float("nan")}, "threshold"),
    ({"mean": [0.5]}, "mean"),
    ({"std": [0.2, 0.2, 0.0]}, "std"),
    ({"model_kwargs": {"alpha": 0.25, "encoder_weights": "/etc/passwd"}}, "encoder_weights"),
])
def test_damaged_descriptions_are_refused_in_one_line(tiny, tmp_path, changes, message):
    path = rewritten(tiny, tmp_path, **changes)
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_empty_random_and_code_files_get_their_own_messages(tmp_path):
    empty, noise, evil = tmp_path / "empty.pt", tmp_path / "noise.pt", tmp_path / "evil.pt"
    empty.write_bytes(b"")
    noise.write_bytes(np.random.default_rng(0).bytes(5000))
    torch.save({"format": "personseg-checkpoint", "payload": Evil()}, evil)
    with pytest.raises(CheckpointError, match="empty file"):
        read_checkpoint(empty)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as error:
        read_checkpoint(noise)
    assert "Python objects" not in str(error.value)
    with pytest.raises(CheckpointError, match="refused") as error:
        read_checkpoint(evil)
    text = str(error.value)
    assert "\x1b" not in text and "weights_only=False" not in text and "\n" not in text


def test_checkpoints_follow_the_umask_and_stale_temps_are_removed(tiny, tmp_path):
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".last.pt.{dead}-0123abcd.tmp"  # a save killed half-way
    stale.write_bytes(b"half")
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "last.pt", tiny[0], arch="unet_mobilenet_v3",
                        model_kwargs={"alpha": 0.25, "decoder_channels": [32, 16, 16, 8, 8]})
    finally:
        os.umask(old)
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "tiny.pt"]


def test_load_takes_the_threshold_the_cli_passes(tiny_checkpoint):
    """`--threshold` goes into `load` (so --keep largest picks its region at it), not onto the predictor after."""
    from argparse import ArgumentParser

    from personseg.cli import add_predictor_arguments, load_predictor

    parser = ArgumentParser()
    add_predictor_arguments(parser)
    own = personseg.load(tiny_checkpoint).threshold
    args = parser.parse_args(["--model", str(tiny_checkpoint), "--device", "cpu", "--threshold", "0.3"])
    assert load_predictor(args).threshold == 0.3 != own
    assert personseg.load(tiny_checkpoint, threshold=0.7).threshold == 0.7


def test_min_peak_flag_sets_the_region_filter(tiny_checkpoint):
    from argparse import ArgumentParser

    from personseg.cli import add_predictor_arguments, load_predictor
    from personseg.regions import RegionFilter

    parser = ArgumentParser()
    add_predictor_arguments(parser)
    plain = parser.parse_args(["--model", str(tiny_checkpoint), "--device", "cpu"])
    assert not load_predictor(plain).regions.active
    args = parser.parse_args(["--model", str(tiny_checkpoint), "--device", "cpu", "--min-peak", "0.9"])
    assert load_predictor(args).regions == RegionFilter(level=0.9, support=0.3)
    assert not personseg.load(tiny_checkpoint, regions=False).regions.active
