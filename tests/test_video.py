"""`personseg video` end to end on short generated clips (with audio), and the video library's parts:
temporal filter, tracker, recurrent model. Clips are 12 frames of 160x96 at 10 fps."""
import re
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
import torch

from personseg.cli import main
from personseg.predict import InputSpec
from personseg.video import Frame, PersonTracker, TemporalFilter, TemporalMedian, VideoError, process_video

FPS, N, W, H = 10, 12, 160, 96


def picture(i: int, width: int = W, height: int = H) -> np.ndarray:
    """A frame with a bright 'person' box moving right over a gradient, numbered by its colour."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.linspace(40, 200, width, dtype=np.uint8)
    image[..., 2] = (i * 20) % 256
    image[height // 5: height * 4 // 5, 10 + 5 * i: 40 + 5 * i] = 255
    return image


def write_clip(path, frames=N, fps=FPS, audio=True, rotation=0, options=None, pts=None, time_base=None):
    """H.264 clip with an AAC 16 kHz mono sine (as long as the video); `pts` in `time_base` for VFR."""
    with av.open(str(path), "w", options=options or {}) as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        if time_base:
            video.time_base = video.codec_context.time_base = time_base
        if rotation:
            video.set_display_rotation(rotation)
        if audio:
            sound = container.add_stream("aac", rate=16000)
            sound.layout = "mono"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(picture(i), format="rgb24")
            if pts:
                frame.pts, frame.time_base = pts[i], time_base
            container.mux(video.encode(frame))
        if audio:
            mux_tone(container, sound, frames / fps)
        container.mux(video.encode(None))
    return path


def mux_tone(container, sound, seconds: float) -> None:
    """A 440 Hz sine of `seconds` encoded into the AAC 16 kHz mono stream `sound`, and flushed."""
    t = np.arange(int(16000 * seconds)) / 16000
    samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
    for start in range(0, samples.shape[1], 1024):
        chunk = av.AudioFrame.from_ndarray(samples[:, start:start + 1024], format="flt", layout="mono")
        chunk.sample_rate, chunk.pts = 16000, start
        container.mux(sound.encode(chunk))
    container.mux(sound.encode(None))


def probe(path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        info = {"frames": video.frames, "rate": video.average_rate, "width": video.width, "height": video.height,
                "video_duration": video.duration and float(video.duration * video.time_base),
                "codec": video.codec_context.name, "pix_fmt": video.codec_context.pix_fmt}
        decoded = list(container.decode(video))
        info["decoded"] = len(decoded)
        info["times"] = [float(f.pts * f.time_base) for f in decoded]
        info["rotation"] = decoded[0].rotation
        info["first"] = decoded[0].to_ndarray(format="rgb24")
    with av.open(str(path)) as container:
        if container.streams.audio:
            audio = container.streams.audio[0]
            info["audio"] = {"codec": audio.codec_context.name, "sample_rate": audio.codec_context.sample_rate,
                             "duration": audio.duration and float(audio.duration * audio.time_base)}
            info["audio_packets"] = [(float(p.pts * p.time_base), bytes(p)) for p in container.demux(audio) if p.size]
    return info


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


@pytest.fixture
def video(tiny_checkpoint, capsys):
    """Run `personseg video ARGS --model tiny --device cpu --no-refine --quiet`; returns (exit code, stderr)."""
    def run(*args):
        code = main(["video", *map(str, args), "--model", str(tiny_checkpoint), "--device", "cpu", "--no-refine",
                     "--quiet"])
        return code, capsys.readouterr().err
    return run


def test_round_trip_keeps_frames_timing_and_audio(clip, tmp_path, video):
    out, masks = tmp_path / "out.mp4", tmp_path / "masks"
    code, err = video(clip, "-o", out, "--save-masks", masks, "--temporal", "flow", "--background", "green")
    assert code == 0, err
    src, dst = probe(clip), probe(out)
    assert (dst["codec"], dst["pix_fmt"]) == ("h264", "yuv420p")
    assert dst["frames"] == dst["decoded"] == src["decoded"] == N
    assert dst["rate"] == FPS and dst["times"] == pytest.approx(src["times"])
    assert dst["video_duration"] == pytest.approx(src["video_duration"], abs=1 / FPS)
    assert dst["audio"]["codec"] == "aac" and dst["audio"]["sample_rate"] == 16000
    assert dst["audio"]["duration"] == pytest.approx(src["audio"]["duration"], abs=1 / FPS)
    assert dst["audio_packets"] == src["audio_packets"]  # copied, not re-encoded
    names = sorted(p.name for p in masks.iterdir())
    assert names == [f"{i:05d}.png" for i in range(N)]
    mask = cv2.imread(str(masks / "00000.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (H, W) and set(np.unique(mask)) <= {0, 255}
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_rotation_and_variable_frame_rate_are_kept(tmp_path, video):
    times = [0, 40, 150, 170, 300, 330, 500, 520]  # ms
    src = write_clip(tmp_path / "vfr.mkv", frames=len(times), audio=False, rotation=90, pts=times,
                     time_base=Fraction(1, 1000))
    out, masks = tmp_path / "out.mkv", tmp_path / "masks"
    code, err = video(src, "-o", out, "--save-masks", masks, "--output-kind", "masks", "--track")  # old name of mask
    assert code == 0, err
    dst = probe(out)
    assert dst["times"] == pytest.approx([t / 1000 for t in times])
    assert dst["rotation"] == 90 and (dst["width"], dst["height"]) == (W, H)  # stored as the input was
    assert cv2.imread(str(masks / "00000.png"), cv2.IMREAD_UNCHANGED).shape == (W, H)  # masks are upright


def test_folder_of_frames_odd_size(tmp_path, video):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(5):
        cv2.imwrite(str(folder / f"f{i:03d}.png"), picture(i, 97, 61)[..., ::-1])
    code, err = video(folder, "-o", tmp_path / "out.mp4", "--fps", 5, "--temporal", "off")
    assert code == 0, err
    dst = probe(tmp_path / "out.mp4")
    assert dst["decoded"] == 5 and dst["rate"] == 5 and "audio" not in dst
    assert (dst["width"], dst["height"]) == (98, 62)  # yuv420p needs even sizes: padded by one pixel


def test_cutout_outputs(clip, tmp_path, video):
    code, err = video(clip, "-o", tmp_path / "cutout", "--output-kind", "cutout")
    assert code == 0, err
    pngs = sorted((tmp_path / "cutout").iterdir())
    assert len(pngs) == N and cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED).shape == (H, W, 4)
    code, err = video(clip, "-o", tmp_path / "cutout.mov", "--output-kind", "cutout")
    assert code == 0, err
    dst = probe(tmp_path / "cutout.mov")
    assert (dst["codec"], dst["pix_fmt"], dst["decoded"]) == ("qtrle", "argb", N)
    assert "audio" in dst


def test_every_output_kind_means_what_segment_writes(clip, tmp_path):
    """`--output-kind K` shows on each frame the picture `segment --save K` writes (alpha: the soft grey alpha)."""
    from personseg import render

    predictor = BrightPredictor()
    for kind, out in render.OUTPUTS.items():
        path = tmp_path / ("cutout" if out.rgba else f"{kind}.mkv")
        process_video(clip, path, predictor, output_kind=kind, temporal="off")
        first = cv2.imread(str(path / "00000.png"), cv2.IMREAD_UNCHANGED) if out.rgba else probe(path)["first"]
        rgb = probe(clip)["first"]
        expected = render.output(kind, rgb, predictor.predict_batch([rgb])[0], 0.5, "blur", foreground=False)
        if expected.ndim == 2:
            expected = np.repeat(expected[..., None], 3, axis=2)
        if out.rgba:
            expected = cv2.cvtColor(expected, cv2.COLOR_RGBA2BGRA)
        assert first.shape == expected.shape, kind
        assert np.abs(first.astype(int) - expected).mean() < 6, kind  # H.264 is lossy


def test_foreground_colours_only_when_asked(clip, tmp_path, video, monkeypatch):
    """Video frames keep the photo's colours unless --foreground (Blur-Fusion on every frame is costly)."""
    from personseg import render

    calls = []
    real = render.person_colours
    monkeypatch.setattr(render, "person_colours", lambda rgb, alpha: calls.append(1) or real(rgb, alpha))
    code, err = video(clip, "-o", tmp_path / "plain.mp4")
    assert code == 0 and not calls, err
    code, err = video(clip, "-o", tmp_path / "own.mp4", "--foreground")
    assert code == 0 and len(calls) == N, err


def test_existing_output_needs_overwrite(clip, tmp_path, video):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"keep me")
    code, err = video(clip, "-o", out)
    assert code == 2 and "--overwrite" in err and out.read_bytes() == b"keep me"
    code, err = video(clip, "-o", out, "--overwrite", "--background", clip)  # a video as the background
    assert code == 0, err
    assert probe(out)["decoded"] == N
    notes = tmp_path / "notes"  # --overwrite replaces whole folders, but only folders of PNGs
    notes.mkdir()
    (notes / "todo.txt").write_text("keep")
    code, err = video(clip, "-o", out, "--overwrite", "--save-masks", notes)
    assert code == 2 and "other than PNGs" in err and (notes / "todo.txt").exists()


def test_corrupt_input_fails_in_one_line_and_writes_nothing(tmp_path, video):
    bad = tmp_path / "random.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(20000))
    code, err = video(bad, "-o", tmp_path / "out.mp4")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "random.mp4" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random.mp4"]


def test_truncated_input(clip, tmp_path, video):
    # moov at the end (the default): half a file cannot be opened, nothing is written
    half = tmp_path / "half.mp4"
    half.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    code, err = video(half, "-o", tmp_path / "a.mp4")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "half.mp4" in err
    assert not (tmp_path / "a.mp4").exists() and not (tmp_path / "a.partial.mp4").exists()
    # moov first (faststart): the frames before the cut are finalized into a valid NAME.partial.mp4
    whole = write_clip(tmp_path / "faststart.mp4", options={"movflags": "+faststart"})
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    code, err = video(cut, "-o", tmp_path / "b.mp4", "--save-masks", tmp_path / "m")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "b.partial.mp4" in err
    assert not (tmp_path / "b.mp4").exists() and not (tmp_path / "m").exists()
    partial = probe(tmp_path / "b.partial.mp4")
    assert 0 < partial["decoded"] < N
    assert len(list((tmp_path / "m.partial").iterdir())) == partial["decoded"]


def test_recurrent_checkpoint_runs_through_the_video_path(clip, tmp_path):
    from personseg.checkpoint import save_checkpoint
    from personseg.models import create_model
    from personseg.predict import Predictor

    torch.manual_seed(0)
    path = tmp_path / "recurrent.pt"
    kwargs = {"alpha": 0.35}
    save_checkpoint(path, create_model("recurrent_unet_mobilenet_v2", **kwargs),
                    arch="recurrent_unet_mobilenet_v2", model_kwargs=kwargs, input_size=(160, 96))
    predictor = Predictor.from_checkpoint(path, refine=False)
    summary = process_video(clip, tmp_path / "out.mp4", predictor, output_kind="mask")
    assert summary.frames == N and probe(tmp_path / "out.mp4")["decoded"] == N
    with pytest.raises(ValueError, match="track"):
        process_video(clip, tmp_path / "out2.mp4", predictor, track=True)


def test_recurrent_step_keeps_tta_and_keep():
    """`Predictor.step` preprocesses, mirrors (tta) and keeps the largest region as `predict` does."""
    from personseg.models import create_model, is_recurrent
    from personseg.predict import Predictor, keep_largest

    torch.manual_seed(0)
    model = create_model("recurrent_unet_mobilenet_v2", alpha=0.35)
    frames = [picture(i) for i in range(3)]  # 160x96: the model's own size, so no resizing blurs the check

    def run(frames, **kwargs):
        predictor = Predictor(model, spec=InputSpec((W, H)), refine=False, **kwargs)
        alphas, state = [], None
        for rgb in frames:
            alpha, state = predictor.step(rgb, state)
            alphas.append(alpha)
        return alphas

    assert is_recurrent(model) and Predictor(model).recurrent
    plain, mirrored = run(frames), run([np.ascontiguousarray(f[:, ::-1]) for f in frames])
    for both, a, b in zip(run(frames, tta=True), plain, mirrored):  # each view carries its own state
        np.testing.assert_allclose(both, (a + b[:, ::-1]) / 2, atol=1e-5)
    for largest, a in zip(run(frames, keep="largest"), plain):
        np.testing.assert_array_equal(largest, keep_largest(a, 0.5))
    with pytest.raises(ValueError, match="recurrent"):
        Predictor(create_model("unet_mobilenet_v2", alpha=0.35)).step(frames[0])


# ------------------------------------------------------------------------------ temporal filter

def square_clip(frames=12, step=4, size=20, height=90, width=160):
    """(rgb, mask) pairs: a white square moving `step` px per frame over a gray textured background."""
    rng = np.random.default_rng(0)
    background = (100 + rng.integers(-5, 6, (height, width, 1))).astype(np.uint8).repeat(3, 2)
    for i in range(frames):
        rgb, mask = background.copy(), np.zeros((height, width), np.float32)
        x = 20 + step * i
        rgb[35:35 + size, x:x + size] = 255
        mask[35:35 + size, x:x + size] = 1
        yield rgb, mask


def iou(a, b):
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


@pytest.mark.parametrize("mode", ["ema", "flow"])
def test_temporal_filter_leaves_a_static_scene_exactly_alone(mode):
    rgb, _ = next(square_clip())
    prob = np.random.default_rng(1).random((90, 160)).astype(np.float32)
    smoother = TemporalFilter(mode)
    for _ in range(4):
        assert np.array_equal(smoother(rgb, prob), prob)


@pytest.mark.parametrize("mode", ["ema", "flow"])
def test_temporal_filter_follows_motion_without_a_trail(mode):
    smoother, strength = TemporalFilter(mode), 0.7
    naive = None
    ours_iou, naive_iou = [], []
    for rgb, mask in square_clip():
        out = smoother(rgb, mask)
        naive = mask if naive is None else strength * naive + (1 - strength) * mask
        truth = mask > 0.5
        ours_iou.append(iou(out >= 0.5, truth))
        naive_iou.append(iou(naive >= 0.5, truth))
    assert min(ours_iou) > 0.9, ours_iou
    assert min(naive_iou) < 0.7  # the plain EMA with the same weight lags behind the square


def test_temporal_filter_damps_flicker_on_a_still_scene():
    rgb, mask = next(square_clip())
    rng = np.random.default_rng(2)
    smoother = TemporalFilter("ema")
    raw, smooth = [], []
    for _ in range(10):
        prob = np.clip(mask * 0.8 + 0.1 + rng.normal(0, 0.08, mask.shape), 0, 1).astype(np.float32)
        raw.append(prob)
        smooth.append(smoother(rgb, prob))
    assert np.std(smooth[5:], axis=0).mean() < 0.7 * np.std(raw[5:], axis=0).mean()


def test_temporal_hysteresis_stops_on_off_wobble_near_the_threshold():
    rgb, mask = next(square_clip())

    def flips(hysteresis: float) -> int:
        rng = np.random.default_rng(3)
        smoother = TemporalFilter("ema", strength=0.0, hysteresis=hysteresis)  # no smoothing: hysteresis alone
        prev, n = None, 0
        for _ in range(10):
            prob = np.clip(mask * 0.3 + 0.35 + rng.normal(0, 0.1, mask.shape), 0, 1).astype(np.float32)
            on = smoother(rgb, prob) >= 0.5
            n += 0 if prev is None else np.count_nonzero(on != prev)
            prev = on
        return n

    assert flips(0.0) > 1000
    assert flips(0.2) < 0.1 * flips(0.0)  # measured 6%


def run_median(probs, **kwargs):
    """Every prob through a TemporalMedian's push/flush; the outputs in order, checked to be complete."""
    smoother = TemporalMedian(**kwargs)
    frames = [Frame(i, None, i, Fraction(1, 10)) for i in range(len(probs))]
    out = [pair for frame, prob in zip(frames, probs) for pair in smoother.push(frame, prob)] + smoother.flush()
    assert [frame.index for frame, _ in out] == list(range(len(probs)))
    return [alpha for _, alpha in out]


@pytest.mark.parametrize("window", [3, 5])
def test_temporal_median_leaves_a_static_scene_exactly_alone(window):
    prob = np.random.default_rng(1).random((90, 160)).astype(np.float32)
    for out in run_median([prob] * 6, window=window):
        assert np.array_equal(out, prob)


@pytest.mark.parametrize("window", [3, 5])
def test_temporal_median_follows_a_moving_square_exactly(window):
    masks = [mask for _, mask in square_clip()]  # every pixel covered for 5 frames: no blinks
    for out, mask in zip(run_median(masks, window=window), masks):
        assert np.array_equal(out >= 0.5, mask > 0.5)


def test_temporal_median_removes_blinks_shorter_than_half_its_window():
    rng = np.random.default_rng(4)
    steady = (rng.random((40, 60)) > 0.5).astype(np.float32)
    probs = [steady.copy() for _ in range(12)]
    probs[3][:20] = 1 - probs[3][:20]  # a one-frame blink on a third of the picture
    probs[7][:, :30] = 1 - probs[7][:, :30]  # and another
    assert all(np.array_equal(out >= 0.5, steady >= 0.5) for out in run_median(probs, window=3))
    probs[8][:, :30] = 1 - probs[8][:, :30]  # two frames long: window 5 removes it, window 3 keeps it
    assert all(np.array_equal(out >= 0.5, steady >= 0.5) for out in run_median(probs, window=5))
    assert not np.array_equal(run_median(probs, window=3)[7] >= 0.5, steady >= 0.5)


def test_temporal_median_handles_clips_shorter_than_its_window_and_new_sizes():
    probs = [np.full((4, 6), v, np.float32) for v in (0.2, 0.9)] + [np.full((8, 6), 0.4, np.float32)]
    out = run_median(probs, window=5, hysteresis=0.0)
    assert [o.shape for o in out] == [(4, 6), (4, 6), (8, 6)]
    # medians of [.2 .2 .2 .9 .9] and [.2 .2 .9 .9 .9] (the ends repeated), then [.4 .4 .4 .4 .4]
    assert [float(o[0, 0]) for o in out] == pytest.approx([0.2, 0.9, 0.4])
    with pytest.raises(ValueError, match="odd"):
        TemporalMedian(window=4)


# ------------------------------------------------------------------------------------ tracker

class BrightPredictor:
    """Stands in for a Predictor: the 'person' is every bright pixel. Records the sizes it was given."""
    threshold, info, spec = 0.5, {}, InputSpec((32, 18))

    def __init__(self):
        self.sizes = []

    def predict_batch(self, images, batch_size=8):
        self.sizes += [im.shape[:2] for im in images]
        return [(im.min(axis=2) > 200).astype(np.float32) for im in images]


def test_tracker_segments_a_crop_and_redetects():
    predictor = BrightPredictor()
    tracker = PersonTracker(predictor, redetect_every=8)
    frames, masks = zip(*square_clip(frames=12, step=2))
    alphas = tracker.predict_batch(list(frames), batch_size=4)
    for alpha, mask in zip(alphas, masks):
        assert np.array_equal(alpha, mask)  # the crop always held the square: same result, zeros outside
    full = [s for s in predictor.sizes if s == (90, 160)]
    assert len(full) == 8 and tracker.detections == 2  # frames 0-3 detect, 4-7 crop, 8-11 re-detect
    assert all(s[0] < 90 and s[1] < 160 for s in predictor.sizes[4:8])
    assert all(abs(s[1] / s[0] - 160 / 90) < 0.1 and s[1] >= 32 for s in predictor.sizes[4:8])  # frame-shaped
    tracker.predict_batch([np.zeros((90, 160, 3), np.uint8)] * 4)  # nobody: the track is lost
    assert tracker.box is None


class DetailPredictor(BrightPredictor):
    """Finds the bright pixels only in pictures at most 100 px wide: a model that needs detail."""

    def predict_batch(self, images, batch_size=8):
        alphas = super().predict_batch(images, batch_size)
        return [a if im.shape[1] <= 100 else np.zeros_like(a) for im, a in zip(images, alphas)]


def test_tracker_finds_a_person_too_small_for_the_full_frame_in_tiles():
    predictor = DetailPredictor()
    tracker = PersonTracker(predictor, redetect_every=8)
    frames, masks = zip(*square_clip(frames=8, step=2))
    alphas = tracker.predict_batch(list(frames), batch_size=4)
    assert all(np.array_equal(a, m) for a, m in zip(alphas, masks))  # tiles, then a crop, found the square
    assert predictor.sizes[:4] == [(90, 160)] * 4 and predictor.sizes[4:20] == [(50, 88)] * 16  # 4 frames x 4 tiles
    assert all(s[1] <= 100 for s in predictor.sizes[20:])  # then the tracked crop, not the frame


# ------------------------------------------------------------------------------------ recurrent

@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter: ~10x faster here
def test_recurrent_model_state_and_onnx_step(tmp_path):
    from personseg.models import create_model

    torch.manual_seed(0)
    model = create_model("recurrent_unet_mobilenet_v2", alpha=0.35).eval()
    x1, x2 = torch.randn(2, 3, 45, 77), torch.randn(2, 3, 45, 77)
    with torch.no_grad():
        logits, state = model(x1)
        assert logits.shape == (2, 1, 45, 77)
        assert [tuple(s.shape) for s in state] == model.state_shapes(2, 45, 77) == \
            [(2, 48, 4, 6), (2, 16, 8, 12), (2, 12, 16, 24), (2, 8, 32, 48)]
        with_state, _ = model(x2, state)
        without, _ = model(x2)
    assert not torch.allclose(with_state, without)

    x1.requires_grad_(True)  # the gradient of the second step's output reaches the first frame
    logits, state = model(x1)
    logits, _ = model(x2, state)
    logits.square().mean().backward()
    assert x1.grad.abs().sum() > 0

    path = tmp_path / "step.onnx"
    names = [f"r{i}" for i in range(4)]
    with torch.no_grad():
        torch.onnx.export(model, (x2, list(state)), str(path), input_names=["frames", *names],
                          output_names=["logits", *[f"{n}_out" for n in names]], dynamo=False, opset_version=17)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"frames": x2.numpy(), **{n: s.detach().numpy() for n, s in zip(names, state)}}
    outputs = session.run(None, feeds)
    with torch.no_grad():
        expected, expected_state = model(x2, [s.detach() for s in state])
    np.testing.assert_allclose(outputs[0], expected.numpy(), atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(outputs[1], expected_state[0].numpy(), atol=1e-4, rtol=1e-3)


def test_recurrent_model_starts_as_its_stateless_twin():
    from personseg.models import create_model

    torch.manual_seed(0)
    twin = create_model("unet_mobilenet_v2", alpha=0.35).eval()
    x = torch.randn(2, 3, 45, 77)
    change = {}
    with torch.no_grad():
        expected = twin(x)
        for residual in (True, False):
            model = create_model("recurrent_unet_mobilenet_v2", alpha=0.35, residual=residual).eval()
            missing, unexpected = model.load_state_dict(twin.state_dict(), strict=False)
            assert not unexpected and all(k.startswith("decoder.grus.") for k in missing)
            logits, state = model(x)
            second, _ = model(x, state)
            change[residual] = max((out - expected).abs().max().item() for out in (logits, second))
    assert change[True] < 0.05 * change[False]  # the state weighs in at 0.01 until training says otherwise


def test_missing_input_is_a_usage_error(tmp_path, video):
    code, err = video(tmp_path / "nope.mp4", "-o", tmp_path / "out.mp4")
    assert code == 2 and "no such file" in err
    with pytest.raises(VideoError):
        process_video(tmp_path, tmp_path / "o.mp4", BrightPredictor())  # an empty folder


# ------------------------------------------------------------------------- hostile inputs (issue 13)

@pytest.fixture(scope="module")
def cut_clip(tmp_path_factory):
    """The first half of a faststart clip: the frames before the cut decode, then it ends."""
    folder = tmp_path_factory.mktemp("cut")
    whole = write_clip(folder / "faststart.mp4", options={"movflags": "+faststart"})
    cut = folder / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return cut


def test_partial_output_never_replaces_an_existing_path(cut_clip, tmp_path):
    # the input itself is named like the partial output, and a user's folder sits at the masks' partial name
    source = tmp_path / "talk.partial.mp4"
    source.write_bytes(cut_clip.read_bytes())
    (tmp_path / "m.partial").mkdir()
    (tmp_path / "m.partial" / "notes.txt").write_text("mine")
    with pytest.raises(VideoError) as error:
        process_video(source, tmp_path / "talk.mp4", BrightPredictor(), save_masks=tmp_path / "m")
    assert source.read_bytes() == cut_clip.read_bytes()
    assert (tmp_path / "m.partial" / "notes.txt").read_text() == "mine"
    assert error.value.partial == tmp_path / "talk.partial-2.mp4" and "m.partial-2" in str(error.value)
    assert 0 < probe(tmp_path / "talk.partial-2.mp4")["decoded"] < N
    # an unrelated file at the partial name is kept too, and a second failure takes the next name
    (tmp_path / "o.partial.mp4").write_bytes(b"other")
    for n in (2, 3):
        with pytest.raises(VideoError):
            process_video(cut_clip, tmp_path / "o.mp4", BrightPredictor())
        assert (tmp_path / f"o.partial-{n}.mp4").is_file()
    assert (tmp_path / "o.partial.mp4").read_bytes() == b"other"


def test_partial_output_never_replaces_a_frame_folder_used_as_input(tmp_path):
    frames = tmp_path / "shots.partial"
    frames.mkdir()
    for i in range(3):
        cv2.imwrite(str(frames / f"{i:05d}.png"), picture(i))
    (frames / "00003.png").write_bytes(b"not a png")  # the run stops here and keeps frames 0-2
    before = {p.name: p.read_bytes() for p in frames.iterdir()}
    with pytest.raises(VideoError) as error:
        process_video(frames, tmp_path / "shots", BrightPredictor(), output_kind="cutout")
    assert {p.name: p.read_bytes() for p in frames.iterdir()} == before
    assert error.value.partial == tmp_path / "shots.partial-2"
    assert sorted(p.name for p in error.value.partial.iterdir()) == ["00000.png", "00001.png", "00002.png"]


def test_truncation_message_counts_the_frames_it_kept(cut_clip, tmp_path):
    with pytest.raises(VideoError) as error:
        process_video(cut_clip, tmp_path / "o.mp4", BrightPredictor(), batch_size=5)
    message = str(error.value)
    ends, announced = map(int, re.search(r"ends after (\d+) of the (\d+) frames", message).groups())
    kept = int(re.search(r"the (\d+) frames before it", message).group(1))
    assert announced == N and ends == kept == probe(error.value.partial)["decoded"]


def test_sigterm_removes_temporary_outputs_and_the_next_run_removes_stale_ones(clip, tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys

    from personseg import render

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale_file, stale_folder = tmp_path / f".o.{dead}-0123abcd.tmp.mp4", tmp_path / f".m.{dead}-0123abcd.tmp"
    live = tmp_path / f".o.{os.getppid()}-0123abcd.tmp.mp4"  # a running process's temp stays
    stale_file.write_bytes(b"x"), stale_folder.mkdir(), live.write_bytes(b"x")
    frames = []

    def replace_background(rgb, alpha, back, foreground=True):
        frames.append(1)
        if len(frames) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return rgb

    monkeypatch.setattr(render, "replace_background", replace_background)
    before = signal.getsignal(signal.SIGTERM)  # SIG_DFL, or what an earlier test's library left (ray.init)
    with pytest.raises(SystemExit) as exited:
        process_video(clip, tmp_path / "o.mp4", BrightPredictor(), save_masks=tmp_path / "m")
    assert exited.value.code == 143
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]
    assert signal.getsignal(signal.SIGTERM) is before
