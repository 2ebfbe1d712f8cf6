"""The PresenceHead ("is anyone in the picture?"): the model's extra output, the predictor's gate, its ONNX
export, and scripts/fit_presence.py's fit and choice of cut."""
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from personseg.export import export_onnx  # noqa: E402
from personseg.models import create_model  # noqa: E402
from personseg.predict import InputSpec, Predictor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import fit_presence  # noqa: E402

KWARGS = {"alpha": 0.35}


def _pair():
    torch.manual_seed(0)
    plain = create_model("unet_mobilenet_v2", **KWARGS).eval()
    gated = create_model("unet_mobilenet_v2", **KWARGS, presence=True).eval()
    gated.load_state_dict(plain.state_dict(), strict=False)
    return plain, gated


def test_the_head_adds_an_output_and_leaves_the_mask_as_it_was():
    plain, gated = _pair()
    x = torch.rand(2, 3, 70, 100)
    logits, presence = gated(x)
    assert gated.outputs == ("logits", "presence") and plain.outputs == ("logits",)
    assert presence.shape == (2, 1) and torch.equal(logits, plain(x))


def _info(cut: float) -> dict:
    return {"arch": "unet_mobilenet_v2", "model_kwargs": {**KWARGS, "presence": True}, "input_size": [96, 64],
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "threshold": 0.5,
            "meta": {"presence_threshold": cut}}


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_picture_under_the_cut_gets_no_mask_and_one_over_it_keeps_its_mask(backend, tmp_path):
    plain, gated = _pair()
    torch.nn.init.zeros_(gated.presence.linear.weight)
    rgb = (np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)
    expected = Predictor(plain, spec=InputSpec((96, 64)), threshold=0.5).predict(rgb)
    assert expected.max() > 0.1  # a random model calls something person: the gate has work to do
    for bias, cut, empty in ((-3.0, 0.5, True), (3.0, 0.5, False), (-3.0, 0.0, False)):  # p 0.047 / 0.953
        torch.nn.init.constant_(gated.presence.linear.bias, bias)
        info = _info(cut)
        if backend == "onnx":
            export_onnx(gated, info, tmp_path / "m.onnx")
            predictor = Predictor.from_onnx(tmp_path / "m.onnx")
        else:
            predictor = Predictor(gated, spec=InputSpec((96, 64)), threshold=0.5, info=info)
        assert predictor.presence_threshold == cut and not predictor.has_heads
        alpha = predictor.predict(rgb)
        if empty:
            assert alpha.max() == 0
        else:
            np.testing.assert_allclose(alpha, expected, atol=1e-5)


def test_the_fit_separates_what_is_separable_on_the_raw_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)) * [1, 10, 100, 1, 1, 1] + [0, 50, -7, 0, 0, 0]
    y = (x[:, 1] > 50).astype(np.float32)  # a feature far from zero mean and unit scale
    w, b = fit_presence.fit(x, y, l2=0.01)
    assert (((x @ w + b) > 0) == (y > 0)).mean() > 0.97


def test_the_cut_is_the_one_that_empties_most_without_costing_a_folder():
    rows = [
        {"folder": "coco", "tp": 100, "fp": 10, "fn": 10, "valid": 1000, "p": 0.9},
        {"folder": "coco", "tp": 5, "fp": 0, "fn": 0, "valid": 1000, "p": 0.04},  # a small person, unsure
        {"folder": "negatives", "tp": 0, "fp": 400, "fn": 0, "valid": 1000, "p": 0.02},
        {"folder": "negatives", "tp": 0, "fp": 100, "fn": 0, "valid": 1000, "p": 0.08},
    ]
    cut, table = fit_presence.choose_cut(rows, max_cost=0.01)
    # cuts over 0.04 lose the small person (coco 105/120 -> 100/125, -0.075): 0.03 is the fairest one
    assert cut == 0.03
    assert table["0.03"]["negatives"] == {"fp_share": 0.05, "over_5pct": 1}
    assert table["none"]["negatives"] == {"fp_share": 0.25, "over_5pct": 2}
    assert fit_presence.choose_cut(rows, max_cost=0.1)[0] == 0.1


def test_segment_empties_the_cup_photo_unless_the_cut_is_off(tmp_path):
    """The shipped accurate on scikit-image's coffee cup: 12% called person without its presence head."""
    from PIL import Image
    from skimage import data

    from personseg.cli import main

    Image.fromarray(data.coffee()).save(tmp_path / "coffee.png")
    shares = {}
    for cut in (None, "0"):
        out = tmp_path / f"out{cut}"
        args = ["segment", str(tmp_path / "coffee.png"), "-o", str(out), "--save", "mask", "--quiet"]
        assert main(args + (["--presence-cut", cut] if cut else [])) == 0
        shares[cut] = float((np.asarray(Image.open(out / "coffee_mask.png")) > 127).mean())
    assert shares[None] == 0 and shares["0"] > 0.05, shares


def test_with_presence_head_carries_the_weights_and_the_given_head():
    from personseg.models.unet_mobilenet import with_presence_head

    plain, gated = _pair()
    info = {"arch": "unet_mobilenet_v2", "model_kwargs": KWARGS}
    fresh, fresh_info = with_presence_head(plain, info)
    copied, _ = with_presence_head(plain, info, gated.presence)
    assert fresh_info["model_kwargs"] == {**KWARGS, "presence": True} and info["model_kwargs"] == KWARGS
    for k, v in plain.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v) and torch.equal(copied.state_dict()[k], v)
    assert torch.equal(copied.presence.linear.weight, gated.presence.linear.weight)
    with pytest.raises(ValueError, match="do not fit"):
        with_presence_head(plain, {"arch": "unet_mobilenet_v2", "model_kwargs": {"alpha": 1.0}})
