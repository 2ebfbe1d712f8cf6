"""`personseg serve`: an HTTP API for person segmentation (FastAPI + uvicorn).

    POST /v1/segment        one image (multipart field `image`, or the raw bytes as the body) -> PNG or JSON
    POST /v1/segment/batch  several images (multipart fields `images`) -> JSON, one entry per image
    GET  /healthz           liveness and queue depth
    GET  /v1/models         the loaded model and the shipped ones
    GET  /docs              OpenAPI docs

Decisions (the figures: benchmarks/serve.py, training_logs/serve_benchmark.txt):

* One model, loaded once and shared by `workers` threads (`Workers`; default one per core, at most 4). A
  worker takes a waiting request and does all of its CPU work: decode, `predict_batch`, render, PNG
  encode. The event loop only moves bytes, and no more images are in flight than there are workers, so
  nothing fights for the cores. Each model call gets cores / workers ONNX Runtime threads (at most 4).
  Why not one worker with all the cores: much of `predict` (the guided filter) and the decoding and
  encoding run on one core, which a second worker fills: on the shared 2-core machine two one-thread
  workers did 1.12x the images of one two-thread worker over alternating rounds
  (benchmarks/serve_workers.py), and 15.1 against 9.2 images/s at 4 HTTP clients (benchmarks/serve.py).
* Batching: a worker takes up to `max_batch` waiting requests and runs their images in one model call.
  On CPU that is slower per image and has a longer tail (measured), so the default is 1; on a GPU, raise it.
* PNG compression level 1: on a 600x800 cut-out 1.5x as fast as OpenCV's default 3, for 4% more bytes.
* Limits: body size (413), pixels (413, checked from the header before decoding), time per request (504),
  images waiting (503 when the queue is full, so overload is refused fast instead of piling up). Every
  error is JSON `{"error": "..."}` naming the problem; a bad image never takes the server down.
* Each answer says where its time went (`Server-Timing`: queue, decode, predict, render, encode).
* Binds 127.0.0.1 unless told otherwise.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoint annotations, defined in create_app.

import argparse
import asyncio
import base64
import concurrent.futures
import io
import os
import queue
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from personseg import render
from personseg.cli import add_predictor_arguments, has_extra, load_predictor, positive_int, warn_if_public

FORMATS = ("png", "json")
IMAGE_TYPES = ("image/", "application/octet-stream")
PNG_LEVEL = 1


@dataclass
class Limits:
    """What one request may ask for. `max_queue`: images waiting for a worker before 503."""
    max_body_mb: float = 20.0
    max_pixels: int = 25_000_000
    timeout_s: float = 30.0
    max_batch_images: int = 16
    max_queue: int = 64


class RequestError(Exception):
    """A problem with the request, answered as `status` with JSON {"error": message}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers() -> int:
    """Workers when --workers is not given: one per core, at most 4."""
    return min(cores(), 4)


def default_threads(workers: int) -> int:
    """ONNX Runtime threads per model call when --threads is not given: the cores / workers, at most 4."""
    from personseg.onnx_backend import MAX_THREADS

    return min(MAX_THREADS, max(1, cores() // workers))


# ---------------------------------------------------------------------------------------- the work

@dataclass
class Job:
    """One image of one request: its bytes and what to make of them. `future` gets (png, metadata)."""
    name: str
    data: bytes
    output: str = "mask"
    threshold: float | None = None
    background: object = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    timings: dict = field(default_factory=dict)  # stage -> milliseconds
    submitted: float = field(default_factory=time.perf_counter)


class Workers:
    """`workers` threads sharing one predictor (anything with `predict_batch` and `threshold`). Each takes
    a waiting job, and up to `max_batch` - 1 more if they wait too, and runs them whole (`run_jobs`).
    `submit(job)` returns its Future; it raises RequestError 503 when `max_queue` jobs already wait."""

    def __init__(self, predictor, limits: "Limits", max_batch: int = 1, workers: int = 1, model_name: str = "model"):
        self.predictor, self.limits, self.max_batch, self.model_name = predictor, limits, max_batch, model_name
        self.queue: queue.Queue = queue.Queue(maxsize=limits.max_queue)
        self.batches = self.images = 0
        self._count = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"personseg-worker-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job) -> concurrent.futures.Future:
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise RequestError(503, f"server busy: {self.queue.maxsize} images already waiting; retry later") from None
        return job.future

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                jobs = [self.queue.get(timeout=0.1)]
            except queue.Empty:
                continue
            while len(jobs) < self.max_batch:
                try:
                    jobs.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]  # timed-out ones go
            if jobs:
                self.run_jobs(jobs)

    def run_jobs(self, jobs: list[Job]) -> None:
        """Decode, segment together, render and encode `jobs`, setting each one's result or exception."""
        started = time.perf_counter()
        images = []
        for job in jobs:
            job.timings["queue"] = 1000 * (started - job.submitted)
            try:
                images.append(timed(job, "decode", decode, job.data, self.limits, job.name))
            except RequestError as e:
                job.future.set_exception(e)
                images.append(None)
        todo = [(job, rgb) for job, rgb in zip(jobs, images) if rgb is not None]
        if not todo:
            return
        t0 = time.perf_counter()
        try:
            alphas = self.predictor.predict_batch([rgb for _, rgb in todo], batch_size=self.max_batch)
        except Exception as e:  # noqa: BLE001 - handed to the waiting requests, the worker goes on
            for job, _ in todo:
                job.future.set_exception(e)
            return
        for job, _ in todo:
            job.timings["predict"] = 1000 * (time.perf_counter() - t0)
        with self._count:
            self.batches += 1
            self.images += len(todo)
        for (job, rgb), alpha in zip(todo, alphas):
            try:
                job.future.set_result(self.finish(job, rgb, alpha))
            except Exception as e:  # noqa: BLE001 - this request's problem only
                job.future.set_exception(e)

    def finish(self, job: Job, rgb: np.ndarray, alpha: np.ndarray) -> tuple[bytes, dict]:
        """(PNG bytes, metadata) of one segmented job."""
        t = self.predictor.threshold if job.threshold is None else job.threshold
        image = timed(job, "render", render.output, job.output, rgb, alpha, t, job.background)
        png = timed(job, "encode", encode_png, image)
        meta = {"name": job.name, "width": rgb.shape[1], "height": rgb.shape[0], "output": job.output,
                "model": self.model_name, "threshold": t, "person_fraction": round(float((alpha >= t).mean()), 6),
                "elapsed_ms": round(1000 * (time.perf_counter() - job.submitted), 1),
                "timings_ms": {k: round(v, 1) for k, v in job.timings.items()}}
        return png, meta


def timed(job: Job, stage: str, fn, *args):
    """fn(*args), adding its milliseconds to job.timings[stage]."""
    t0 = time.perf_counter()
    try:
        return fn(*args)
    finally:
        job.timings[stage] = job.timings.get(stage, 0.0) + 1000 * (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------- images in, out

def decode(data: bytes, limits: Limits, name: str = "image") -> np.ndarray:
    """Image bytes -> (H, W, 3) uint8 RGB as `personseg.imageio.read_image` reads files (EXIF rotation,
    transparency onto white). Raises RequestError 400 (not an image, truncated) or 413 (too many pixels)."""
    from PIL import Image, UnidentifiedImageError

    from personseg.imageio import ImageReadError, read_image

    if not data:
        raise RequestError(400, f"{name}: empty body; send the image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # the header only: size before decoding
                width, height = im.size
    except Image.DecompressionBombError:  # Pillow's own limit, far above ours, refused in the header
        raise RequestError(413, f"{name}: over {2 * Image.MAX_IMAGE_PIXELS:,} pixels, which is over this "
                                f"server's limit of {limits.max_pixels:,}; downscale it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise RequestError(400, f"{name}: not a readable image (send JPEG, PNG, WebP, BMP, TIFF or GIF bytes)") from None
    if width * height > limits.max_pixels:
        raise RequestError(413, f"{name}: {width}x{height} = {width * height:,} pixels is over this server's "
                                f"limit of {limits.max_pixels:,}; downscale it first")
    # read_image takes a path; a temporary file keeps one reader for the CLI and the server.
    with tempfile.NamedTemporaryFile(prefix="personseg-serve-", suffix=".img") as f:
        f.write(data)
        f.flush()
        try:
            return read_image(f.name)
        except ImageReadError as e:
            raise RequestError(400, f"{name}: {e.reason}") from None


def encode_png(image: np.ndarray) -> bytes:
    """(H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA uint8 -> PNG bytes."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, buffer = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


def parse_background(value: str) -> render.Background:
    """"blur" or a colour; image paths are refused (a client must not make the server read its files)."""
    try:
        return render.parse_background(value, images=False)
    except ValueError:
        raise RequestError(422, f"background={value!r}: use blur or a colour (#RRGGBB, R,G,B or one of "
                                f"{', '.join(render.COLORS)})") from None


def check_options(output: str, background: str):
    """The parsed background for `output`, or RequestError 422."""
    if output not in render.OUTPUTS:
        raise RequestError(422, f"output={output!r}: choose one of {', '.join(render.OUTPUTS)}")
    return parse_background(background) if output == "background" else None


async def read_body(request, limits: Limits) -> bytes:
    """The request body, refused with 413 as soon as it is over `limits.max_body_mb`."""
    limit = int(limits.max_body_mb * 1024 * 1024)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {int(declared):,} bytes is over the limit of {limit:,} "
                                f"({limits.max_body_mb:g} MB)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body is over the limit of {limit:,} bytes ({limits.max_body_mb:g} MB)")
        chunks.append(chunk)
    return b"".join(chunks)


async def images_of(request, field: str, many: bool, limits: Limits) -> list[tuple[str, bytes]]:
    """(name, bytes) of the uploaded images: multipart files, or the raw body for one image."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        body = await read_body(request, limits)  # size-checked before the form parser spools anything
        from starlette.datastructures import UploadFile
        from starlette.requests import Request as StarletteRequest

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        form = await StarletteRequest(request.scope, replay).form(max_files=limits.max_batch_images + 1)
        files = [v for k, v in form.multi_items() if isinstance(v, UploadFile) and (k == field or not many)]
        if not files:
            raise RequestError(422, f"no file in the form; send the image as the multipart field {field!r}")
        return [(f.filename or field, await f.read()) for f in files]
    if many:
        raise RequestError(415, f"content type {content_type or 'none'!r}: send multipart/form-data "
                                f"with one or more {field!r} files")
    if not content_type.startswith(IMAGE_TYPES):
        raise RequestError(415, f"content type {content_type or 'none'!r} is not an image; send the image "
                                "bytes as image/* (or application/octet-stream), or multipart/form-data")
    return [("body", await read_body(request, limits))]


async def segment_one(state, name: str, data: bytes, output: str, threshold: float | None,
                      background) -> tuple[bytes, dict]:
    """One image through the app's workers: (png, metadata), or RequestError (400, 413, 503, 504).
    `state` is the app's state: its workers and limits."""
    job = Job(name, data, output, threshold, background)
    future = state.workers.submit(job)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout=state.limits.timeout_s)
    except asyncio.TimeoutError:
        future.cancel()  # not started yet: no worker will take it
        raise RequestError(504, f"{name}: not done within the server's limit of {state.limits.timeout_s:g} s") from None


def server_timing(meta: dict) -> str:
    """The Server-Timing header of an answer: each stage's milliseconds."""
    return ", ".join(f"{stage};dur={ms}" for stage, ms in meta["timings_ms"].items())


def _add_error_handlers(app) -> None:
    """Every error as JSON {"error": "..."}: ours, Starlette's (404, 405...) and validation (422)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError):
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        return JSONResponse({"error": problems}, status_code=422)


# ------------------------------------------------------------------------------------------ the app

def create_app(predictor, *, model_name: str = "model", limits: Limits | None = None, max_batch: int = 1,
               workers: int = 1):
    """The FastAPI app around one loaded predictor (anything with `predict_batch` and `threshold`), run by
    `workers` threads taking up to `max_batch` waiting images at a time (`Workers`)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Query, Request
    from fastapi.responses import JSONResponse, Response

    limits = limits or Limits()
    pool = Workers(predictor, limits, max_batch=max_batch, workers=workers, model_name=model_name)
    started = time.time()

    @asynccontextmanager
    async def lifespan(app):
        yield
        pool.close()

    app = FastAPI(title="personseg", version=_version(), lifespan=lifespan,
                  description="Person segmentation: masks, soft alpha, cut-outs and new backgrounds.")
    state = app.state
    state.workers, state.limits = pool, limits
    _add_error_handlers(app)

    output_q = Query("mask", description=f"what to return: {', '.join(render.OUTPUTS)}")
    format_q = Query("png", pattern="^(png|json)$", description="png: the image itself; json: base64 PNG + metadata")
    background_q = Query("blur", description="for output=background: blur, #RRGGBB, R,G,B or a colour name")
    threshold_q = Query(None, ge=0.0, le=1.0, description="mask threshold (default: the model's own)")

    @app.post("/v1/segment", summary="Segment one image",
              description="The image as the multipart field `image` or as the raw body (image/*). "
                          "Returns a PNG of the requested output, or JSON with it as base64 and metadata.",
              responses={200: {"content": {"image/png": {}}}})
    async def segment(request: Request, output: str = output_q, format: str = format_q,
                      background: str = background_q, threshold: float | None = threshold_q):
        bg = check_options(output, background)
        name, data = (await images_of(request, "image", many=False, limits=limits))[0]
        png, meta = await segment_one(state, name, data, output, threshold, bg)
        if format == "png":
            headers = {"X-Person-Fraction": str(meta["person_fraction"]), "X-Elapsed-Ms": str(meta["elapsed_ms"]),
                       "Server-Timing": server_timing(meta)}
            return Response(png, media_type="image/png", headers=headers)
        return JSONResponse({**meta, "png_base64": base64.b64encode(png).decode("ascii")})

    @app.post("/v1/segment/batch", summary="Segment several images",
              description=f"Multipart fields `images` (at most {limits.max_batch_images}). JSON list, one "
                          "entry per image in order: the base64 PNG and metadata, or an error for that image.")
    async def segment_batch(request: Request, output: str = output_q, background: str = background_q,
                            threshold: float | None = threshold_q):
        bg = check_options(output, background)
        files = await images_of(request, "images", many=True, limits=limits)
        if len(files) > limits.max_batch_images:
            raise RequestError(413, f"{len(files)} images is over the limit of {limits.max_batch_images} per request")

        async def one(name: str, data: bytes) -> dict:
            try:
                png, meta = await segment_one(state, name, data, output, threshold, bg)
            except RequestError as e:
                return {"name": name, "error": e.message, "status": e.status}
            return {**meta, "png_base64": base64.b64encode(png).decode("ascii")}

        return {"results": list(await asyncio.gather(*(one(n, d) for n, d in files)))}

    @app.get("/healthz", summary="Liveness")
    async def healthz():
        return {"status": "ok", "model": model_name, "queued": pool.queue.qsize(), "workers": len(pool._threads),
                "batches": pool.batches, "images": pool.images, "uptime_s": round(time.time() - started, 1)}

    @app.get("/v1/models", summary="The loaded model and the shipped ones")
    async def models():
        return {"loaded": describe(predictor, model_name), "shipped": shipped_models(),
                "limits": {"max_body_mb": limits.max_body_mb, "max_pixels": limits.max_pixels,
                           "timeout_s": limits.timeout_s, "max_batch_images": limits.max_batch_images}}

    return app


def describe(predictor, model_name: str) -> dict:
    """The loaded model, as GET /v1/models shows it."""
    info = getattr(predictor, "info", {}) or {}
    return {"name": model_name, "threshold": predictor.threshold,
            "input_size": list(getattr(predictor, "input_size", ()) or []),
            "architecture": info.get("arch"), "tta": getattr(predictor, "tta", None),
            "format": info.get("format"), "precision": info.get("precision")}


def shipped_models() -> list[str]:
    from personseg.predict import shipped_models

    return shipped_models()


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("personseg")
    except Exception:  # noqa: BLE001 - not installed: a source checkout
        return "0"


# ------------------------------------------------------------------------------------------ the CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_predictor_arguments(parser, default_device="cpu")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 exposes the "
                             "API to the network, with no authentication)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--workers", type=positive_int, default=default_workers(), metavar="N",
                        help="requests run at once, sharing the one model (default: one per core, at most 4; "
                             "here %(default)s)")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="ONNX Runtime threads per model call (default: the cores / --workers, at most 4)")
    parser.add_argument("--max-batch", type=positive_int, default=1, metavar="N",
                        help="waiting images a worker runs through the model together (default: 1, as on CPU "
                             "batches are slower per image; try 8 on a GPU)")
    parser.add_argument("--max-body-mb", type=float, default=Limits.max_body_mb, help="request body limit (default: 20)")
    parser.add_argument("--max-pixels", type=int, default=Limits.max_pixels, help="pixels per image (default: 25M)")
    parser.add_argument("--timeout", type=float, default=Limits.timeout_s, metavar="S",
                        help="seconds one image may take, queueing included, before 504 (default: 30)")
    parser.add_argument("--max-queue", type=int, default=Limits.max_queue, metavar="N",
                        help="images waiting for the model before requests get 503 (default: 64)")


def run(args: argparse.Namespace) -> int:
    if not has_extra("serve", "uvicorn", "FastAPI and uvicorn", "serve"):
        return 2
    import uvicorn

    warn_if_public(args.host, "the API")
    try:
        # ORT's threads do not spin-wait: decoding, filtering and encoding (and other workers) share the cores
        predictor = load_predictor(args, spinning=False, threads=args.threads or default_threads(args.workers))
    except (OSError, ValueError) as e:
        print(f"personseg serve: cannot load the model: {e}", file=sys.stderr)
        return 2
    limits = Limits(max_body_mb=args.max_body_mb, max_pixels=args.max_pixels, timeout_s=args.timeout,
                    max_queue=args.max_queue)
    name = Path(args.model).stem if args.model else "default"
    app = create_app(predictor, model_name=name, limits=limits, max_batch=args.max_batch, workers=args.workers)
    uvicorn.run(app, host=args.host, port=args.port, log_level=os.environ.get("PERSONSEG_LOG_LEVEL", "info"),
                timeout_keep_alive=5, limit_concurrency=4 * limits.max_queue)
    return 0
