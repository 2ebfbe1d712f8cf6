"""`personseg demo` without a browser: the video tab through Gradio's own client (a clip made here, back as
an mp4 with its audio), the clip-length limit, and the demo on ONNX Runtime with torch unimportable. The
photo tab in a real browser: tests/test_demo_browser.py."""
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytest.importorskip("gradio", reason='the demo needs Gradio: pip install "personseg[demo]"')
av = pytest.importorskip("av")

from test_torch_free import TRAIN_EXTRA_MODULES, blocking  # noqa: E402 (after the skips)
from test_video import mux_tone  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
W, H, FPS, FRAMES = 96, 128, 10, 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_clip(path: Path, photo: Path) -> Path:
    """A 0.6 s H.264 clip of a real portrait (W x H) panning a pixel a frame, with an AAC 16 kHz tone."""
    rgb = np.asarray(Image.open(photo).convert("RGB").resize((W + FRAMES, H)))
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        sound = container.add_stream("aac", rate=16000)
        sound.layout = "mono"
        for i in range(FRAMES):
            frame = np.ascontiguousarray(rgb[:, i:i + W])
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        mux_tone(container, sound, FRAMES / FPS)
        container.mux(video.encode(None))
    return path


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]


@pytest.fixture(scope="module")
def models():
    from personseg.demo import Models

    return Models(["fast"], "fast", refine=False)


@pytest.fixture
def clip(data_dir, tmp_path) -> Path:
    return write_clip(tmp_path / "clip.mp4", data_dir / "portraits" / "images" / "00001.jpg")


def test_video_tab_gives_back_an_mp4_with_the_audio(models, clip, tmp_path):
    from gradio_client import Client, handle_file

    from personseg.demo import build_demo, launch

    port = free_port()
    demo = build_demo(models)
    launch(demo, port=port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "got"),
                        analytics_enabled=False)
        job = client.submit(handle_file(str(clip)), "fast", 0.5, "green", "#00b140", api_name="/segment_video")
        result = job.result(timeout=180)
    finally:
        demo.close()
    path = Path(result["video"] if isinstance(result, dict) else result)
    assert path.suffix == ".mp4" and path.is_file(), result
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        frames = [f.to_ndarray(format="rgb24").astype(int) for f in container.decode(video=0)]
    assert len(frames) == FRAMES and frames[0].shape == (H, W, 3)
    assert audio_packets(path) == audio_packets(clip)  # the sound copied, not re-encoded
    # green where the model sees background, the portrait kept where it sees the person
    with av.open(str(clip)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    alpha = models.get("fast").predict(first)
    background, person = alpha < 0.1, alpha > 0.9
    assert background.mean() > 0.1 and person.mean() > 0.2
    green = np.abs(frames[0][background] - [0, 255, 0]).mean()
    kept = np.abs(frames[0][person] - first[person]).mean()
    assert green < 40 and kept < 20, f"mean distance to green {green:.0f} (background), to the photo {kept:.0f} (person)"


def test_video_tab_refuses_a_long_clip(models, clip):
    import gradio as gr

    from personseg.demo import segment_video

    with pytest.raises(gr.Error, match="this demo takes up to 0.2 s"):
        segment_video(models, str(clip), "fast", 0.5, "blur", "#00b140", max_seconds=0.2)
    with pytest.raises(gr.Error, match="Not a readable video"):
        segment_video(models, __file__, "fast", 0.5, "blur", "#00b140", max_seconds=30)


# torch and the train extra's packages unimportable; yaml stays, as Gradio itself needs it
NO_TORCH = blocking(TRAIN_EXTRA_MODULES - {"yaml"})


def test_demo_runs_on_onnx_runtime_without_torch(data_dir):
    if not (REPO / "personseg" / "weights" / "accurate.onnx").exists():
        pytest.skip("no personseg/weights/accurate.onnx: run python scripts/ship_onnx.py accurate")
    code = NO_TORCH + textwrap.dedent("""
        import sys
        import numpy as np
        from PIL import Image
        from personseg.demo import Models, build_demo, segment_photo

        models = Models(["accurate", "fast"], "accurate")
        build_demo(models)
        rgb = np.asarray(Image.open(sys.argv[1]).convert("RGB").resize((150, 200)))
        mask, cutout, background = segment_photo(models, rgb, "accurate", 0.5, "blur", "#00b140")
        assert mask.shape == (200, 150) and 0.2 < (mask == 255).mean() < 0.9
        assert cutout.shape == (200, 150, 4) and background.shape == (200, 150, 3)
        assert models.get("accurate").backend == "onnx" and "torch" not in sys.modules
        print("ok")
    """)
    photo = data_dir / "portraits" / "images" / "00001.jpg"
    result = subprocess.run([sys.executable, "-c", code, str(photo)], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
