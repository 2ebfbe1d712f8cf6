"""`personseg demo`: try a model in the browser (Gradio).

A photo (upload or webcam) gives its mask, cut-out and new background side by side; a short video gives
the processed mp4 back, audio kept. Model and threshold are chosen on the page. Outputs are PNG (Gradio's
default WebP is lossy, which blurs a mask's edges). Binds 127.0.0.1 unless --host says otherwise; uploads
are limited in size, videos in length; Gradio's analytics are off, so the demo makes no outside requests.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from personseg import render
from personseg.cli import has_extra, warn_if_public

OUTPUT_BUTTONS = ["download", "fullscreen"]  # no "share": that would upload to a hosting service
BACKGROUNDS = ["blur", "white", "black", "green", "blue", "gray", "custom colour"]


class Models:
    """Shipped models by name, each loaded on first use and then shared (a lock: Gradio runs callbacks
    in threads)."""

    def __init__(self, names: list[str], default: str, refine: bool = True):
        self.names, self.default, self.refine = names, default, refine
        self._loaded: dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, name: str | None):
        import personseg

        name = name or self.default
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = personseg.load(name, refine=self.refine)
            return self._loaded[name]


def background_of(choice: str, colour: str | None):
    """The background a page's choice names (no image paths: the page must not read the server's files)."""
    return render.parse_background(_hex(colour or "#00b140") if choice == "custom colour" else choice, images=False)


def _hex(colour: str) -> str:
    """Gradio's ColorPicker gives #rrggbb or rgba(r, g, b, a); render wants #RRGGBB or R,G,B."""
    colour = colour.strip()
    if colour.startswith("rgb"):
        r, g, b = (round(float(v)) for v in colour[colour.index("(") + 1:-1].split(",")[:3])
        return f"{r},{g},{b}"
    return colour


def segment_photo(models: Models, rgb: np.ndarray | None, model: str, threshold: float, choice: str, colour: str):
    """(mask, cut-out, new background) for an (H, W, 3) uint8 photo, each of the photo's size."""
    import gradio as gr

    if rgb is None:
        raise gr.Error("Upload a photo or take one with the webcam first.")
    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    alpha = models.get(model).predict(rgb)
    return (render.mask(alpha, threshold), render.cutout(rgb, alpha),
            render.replace_background(rgb, alpha, background_of(choice, colour)))


def segment_video(models: Models, path: str | None, model: str, threshold: float, choice: str, colour: str,
                  max_seconds: float) -> str:
    """The clip at `path` with its background replaced, as an mp4 (audio copied); refuses long clips."""
    import av
    import gradio as gr

    from personseg.video import VideoError, process_video

    if not path:
        raise gr.Error("Upload a video first.")
    try:
        with av.open(path) as container:
            seconds = (container.duration or 0) / 1_000_000
    except (av.error.FFmpegError, OSError) as e:
        raise gr.Error(f"Not a readable video: {e}") from None
    if seconds > max_seconds:
        raise gr.Error(f"The clip is {seconds:.0f} s long; this demo takes up to {max_seconds:g} s "
                       "(use `personseg video` for long ones).")
    output = Path(tempfile.mkdtemp(prefix="personseg-demo-")) / f"{Path(path).stem}_personseg.mp4"
    try:
        process_video(path, output, models.get(model), background=background_of(choice, colour),
                      threshold=threshold)
    except (VideoError, ValueError) as e:
        raise gr.Error(str(e)) from None
    return str(output)


def build_demo(models: Models, max_video_seconds: float = 30.0):
    """The Gradio Blocks app. Element ids (for tests and scripts): photo, run, mask, cutout, background,
    clip, run-video, result; API endpoints (gradio_client): /segment_photo, /segment_video."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    def controls():
        with gr.Row():
            model = gr.Dropdown(models.names, value=models.default, label="Model")
            threshold = gr.Slider(0.05, 0.95, value=round(models.get(None).threshold, 2), step=0.05,
                                  label="Mask threshold")
            choice = gr.Dropdown(BACKGROUNDS, value="blur", label="New background")
            colour = gr.ColorPicker("#00b140", label="Custom colour")
        return model, threshold, choice, colour

    with gr.Blocks(title="personseg demo", analytics_enabled=False) as demo:
        gr.Markdown("# personseg\nFind the people in a photo or a video, pixel by pixel.")
        with gr.Tab("Photo"):
            options = controls()
            with gr.Row():
                photo = gr.Image(sources=["upload", "webcam"], type="numpy", image_mode="RGB", format="png",
                                 label="Photo", elem_id="photo")
                mask = gr.Image(format="png", type="numpy", label="Mask", elem_id="mask", interactive=False,
                                buttons=OUTPUT_BUTTONS)
                cutout = gr.Image(format="png", type="numpy", image_mode="RGBA", label="Cut-out",
                                  elem_id="cutout", interactive=False, buttons=OUTPUT_BUTTONS)
                background = gr.Image(format="png", type="numpy", label="New background", elem_id="background",
                                      interactive=False, buttons=OUTPUT_BUTTONS)
            run = gr.Button("Segment", variant="primary", elem_id="run")
            inputs = [photo, *options]
            outputs = [mask, cutout, background]
            run.click(lambda *a: segment_photo(models, *a), inputs, outputs, concurrency_limit=1,
                      api_name="segment_photo")
            photo.upload(lambda *a: segment_photo(models, *a), inputs, outputs, concurrency_limit=1,
                         api_visibility="private")
        with gr.Tab("Video"):
            video_options = controls()
            with gr.Row():
                clip = gr.Video(label=f"Clip (up to {max_video_seconds:g} s)", sources=["upload"], elem_id="clip")
                result = gr.Video(label="Result", elem_id="result", interactive=False)
            go = gr.Button("Process video", variant="primary", elem_id="run-video")
            go.click(lambda *a: segment_video(models, *a, max_seconds=max_video_seconds), [clip, *video_options],
                     result, concurrency_limit=1, api_name="segment_video")
    return demo


def shipped_names() -> list[str]:
    from personseg.predict import DEFAULT_MODEL, shipped_models

    return shipped_models() or [DEFAULT_MODEL]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="NAME", help="the model selected at start (default: the shipped default)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 shows the demo "
                             "to the network, with no authentication)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, metavar="MB", help="upload limit (default: 20)")
    parser.add_argument("--max-video-seconds", type=float, default=30.0, metavar="S",
                        help="longest clip the video tab takes (default: 30)")
    parser.add_argument("--no-refine", action="store_true", help="bilinear upsampling instead of the guided filter")


def launch(demo, host: str = "127.0.0.1", port: int = 7860, max_upload_mb: float = 20.0, block: bool = True):
    """Start the demo's server; with block=False return at once (tests). Returns Gradio's (app, url, _)."""
    from gradio import networking

    if hasattr(networking, "url_ok"):  # Gradio's own check gives up after 3 s, too soon on a busy machine
        networking.url_ok = _url_ok
    return demo.launch(server_name=host, server_port=port, max_file_size=f"{max_upload_mb:g}mb",
                       share=False, ssr_mode=False, inbrowser=False, prevent_thread_lock=not block,
                       footer_links=[], quiet=not block)


def _url_ok(url: str, patience_s: float = 60.0) -> bool:
    """Whether the just-started server answers at `url` within `patience_s`."""
    import time

    import httpx

    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        try:
            if httpx.head(url, timeout=10).status_code < 400:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if not has_extra("demo", "gradio", "Gradio", "demo"):
        return 2
    warn_if_public(args.host, "the demo")
    names = shipped_names()
    default = args.model or ("accurate" if "accurate" in names else names[0])
    models = Models(sorted({*names, default}), default, refine=not args.no_refine)
    try:
        models.get(default)
    except (OSError, ValueError) as e:
        print(f"personseg demo: cannot load the model: {e}", file=sys.stderr)
        return 2
    launch(build_demo(models, args.max_video_seconds), args.host, args.port, args.max_upload_mb)
    return 0
