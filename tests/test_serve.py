"""`personseg serve`: every endpoint through httpx, bad inputs and limits, and concurrent clients on a real
uvicorn server bound to 127.0.0.1. The shipped `fast` model on small real photos; a stub predictor where the
test is about the server, not the model."""
import asyncio
import base64
import contextlib
import io
import socket
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason='the server needs FastAPI: pip install "personseg[serve]"')
httpx = pytest.importorskip("httpx", reason='the API tests need httpx: pip install "personseg[serve]"')

from personseg.serve import Limits, create_app  # noqa: E402


class StubPredictor:
    """Alpha = a left-to-right ramp; `delay` seconds per batch; records batch sizes and the most calls
    that ran at once."""
    threshold = 0.5
    input_size = (64, 64)

    def __init__(self, delay: float = 0.0):
        self.delay, self.batch_sizes = delay, []
        self.running = self.most_at_once = 0
        self.lock = threading.Lock()

    def predict_batch(self, images, batch_size=8):
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(self.delay)
        with self.lock:
            self.running -= 1
            self.batch_sizes.append(len(images))
        return [np.tile(np.linspace(0, 1, im.shape[1], dtype=np.float32), (im.shape[0], 1)) for im in images]


@pytest.fixture(scope="module")
def fast():
    import personseg

    return personseg.load("fast", refine=False)


@pytest.fixture(scope="module")
def photo_bytes(data_dir) -> bytes:
    """A real portrait downscaled to 240x320 (W x H), as JPEG bytes."""
    im = Image.open(data_dir / "portraits" / "images" / "00001.jpg").convert("RGB").resize((240, 320))
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def call(app, method, url, **kwargs):
    """One request to `app` in-process (httpx's ASGI transport: no socket)."""
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.request(method, url, **kwargs)
    return asyncio.run(go())


def png(response) -> np.ndarray:
    assert response.headers["content-type"] == "image/png", response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


@pytest.fixture(scope="module")
def app(fast):
    return create_app(fast, model_name="fast")


def test_segment_raw_body_and_multipart_give_the_same_mask(app, fast, photo_bytes):
    raw = call(app, "POST", "/v1/segment", content=photo_bytes, headers={"content-type": "image/jpeg"})
    form = call(app, "POST", "/v1/segment", files={"image": ("p.jpg", photo_bytes, "image/jpeg")})
    assert raw.status_code == form.status_code == 200
    mask = png(raw)
    assert mask.shape == (320, 240) and set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask, png(form))
    rgb = np.asarray(Image.open(io.BytesIO(photo_bytes)).convert("RGB"))
    expected = np.where(fast.predict(rgb) >= fast.threshold, 255, 0)
    assert (mask == expected).mean() > 0.999
    assert 0.2 < float(raw.headers["x-person-fraction"]) < 0.9  # a portrait: the person is most of it


@pytest.mark.parametrize("output, shape", [("alpha", (320, 240)), ("cutout", (320, 240, 4)),
                                           ("background", (320, 240, 3))])
def test_segment_outputs(app, photo_bytes, output, shape):
    r = call(app, "POST", f"/v1/segment?output={output}&background=%2300b140", content=photo_bytes,
             headers={"content-type": "image/jpeg"})
    assert r.status_code == 200
    assert png(r).shape == shape


def test_segment_json_has_base64_png_and_metadata(app, photo_bytes):
    r = call(app, "POST", "/v1/segment?format=json&threshold=0.3", content=photo_bytes,
             headers={"content-type": "application/octet-stream"})
    body = r.json()
    assert r.status_code == 200
    assert (body["width"], body["height"], body["threshold"], body["model"]) == (240, 320, 0.3, "fast")
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["png_base64"]))))
    assert mask.shape == (320, 240)
    assert body["person_fraction"] == pytest.approx((mask == 255).mean(), abs=1e-5)


def test_batch_reports_each_image(app, photo_bytes):
    files = [("images", ("a.jpg", photo_bytes, "image/jpeg")), ("images", ("b.txt", b"not an image", "text/plain")),
             ("images", ("c.jpg", photo_bytes, "image/jpeg"))]
    r = call(app, "POST", "/v1/segment/batch?output=alpha", files=files)
    assert r.status_code == 200
    a, b, c = r.json()["results"]
    assert (a["name"], a["width"], a["height"]) == ("a.jpg", 240, 320) and a["png_base64"] == c["png_base64"]
    assert b["status"] == 400 and "not a readable image" in b["error"]


def test_healthz_models_and_docs(app):
    health = call(app, "GET", "/healthz").json()
    assert health["status"] == "ok" and health["model"] == "fast"
    models = call(app, "GET", "/v1/models").json()
    assert models["loaded"]["name"] == "fast" and {"fast", "accurate"} <= set(models["shipped"])
    assert call(app, "GET", "/docs").status_code == 200
    paths = call(app, "GET", "/openapi.json").json()["paths"]
    assert {"/v1/segment", "/v1/segment/batch", "/healthz", "/v1/models"} <= set(paths)


def stub_app(**limits):
    return create_app(StubPredictor(), model_name="stub", limits=Limits(**limits))


def jpeg(width: int, height: int) -> bytes:
    """Random pixels (so the file is mostly image data, past its header) as JPEG bytes."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("content, content_type, status, words", [
    (b"plain text, not a picture", "image/jpeg", 400, "not a readable image"),
    (jpeg(160, 120)[:4000], "image/jpeg", 400, "truncated"),
    (b"", "image/png", 400, "empty body"),
    (jpeg(64, 48), "text/plain", 415, "not an image"),
    (jpeg(64, 48), "", 415, "not an image"),
])
def test_bad_inputs_get_json_errors_and_the_server_keeps_serving(content, content_type, status, words):
    app = stub_app()
    r = call(app, "POST", "/v1/segment", content=content, headers={"content-type": content_type})
    assert r.status_code == status and words in r.json()["error"], r.text
    ok = call(app, "POST", "/v1/segment", content=jpeg(64, 48), headers={"content-type": "image/jpeg"})
    assert ok.status_code == 200 and png(ok).shape == (48, 64)


@pytest.mark.parametrize("query, words", [("output=nope", "output='nope'"), ("format=gif", "format"),
                                          ("threshold=2", "threshold"), ("output=background&background=/etc/hosts",
                                                                         "use blur or a colour")])
def test_bad_options(query, words):
    r = call(stub_app(), "POST", f"/v1/segment?{query}", content=jpeg(8, 8), headers={"content-type": "image/jpeg"})
    assert r.status_code == 422 and words in r.json()["error"], r.text


def test_limits():
    small = stub_app(max_body_mb=0.1, max_pixels=100 * 100, max_batch_images=2)
    huge = call(small, "POST", "/v1/segment", content=b"\xff" * 200_000, headers={"content-type": "image/jpeg"})
    assert huge.status_code == 413 and "over the limit" in huge.json()["error"]
    pixels = call(small, "POST", "/v1/segment", content=jpeg(200, 100), headers={"content-type": "image/jpeg"})
    assert pixels.status_code == 413 and "20,000 pixels" in pixels.json()["error"]
    files = [("images", (f"{i}.jpg", jpeg(8, 8), "image/jpeg")) for i in range(3)]
    many = call(small, "POST", "/v1/segment/batch", files=files)
    assert many.status_code == 413 and "limit of 2" in many.json()["error"]
    assert call(small, "POST", "/v1/segment", content=jpeg(100, 100), headers={"content-type": "image/jpeg"}).status_code == 200


def png_header(width: int, height: int) -> bytes:
    """The first bytes of an RGB PNG that says it is width x height (a decompression bomb's start): its
    header and the start of its pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(3 * width + 1)))


def test_a_huge_image_is_refused_from_its_header_under_the_default_limits():
    r = call(stub_app(), "POST", "/v1/segment", content=png_header(40_000, 40_000), headers={"content-type": "image/png"})
    assert r.status_code == 413 and "over this server's limit of 25,000,000" in r.json()["error"], r.text
    r = call(stub_app(), "POST", "/v1/segment", content=png_header(6000, 5000), headers={"content-type": "image/png"})
    assert r.status_code == 413 and "30,000,000 pixels is over this server's limit" in r.json()["error"], r.text


@pytest.mark.parametrize("kwargs, status, words", [
    ({"content": jpeg(64, 48), "headers": {"content-type": "image/jpeg"}}, 415, "multipart/form-data"),
    ({"data": {"note": "no file here"}, "files": {"other": ("x.txt", b"x", "text/plain")}}, 422, "no file"),
    ({"files": [("images", ("big.jpg", b"\xff" * 200_000, "image/jpeg"))]}, 413, "over the limit"),
])
def test_batch_bad_requests(kwargs, status, words):
    small = stub_app(max_body_mb=0.1)
    r = call(small, "POST", "/v1/segment/batch", **kwargs)
    assert r.status_code == status and words in r.json()["error"], r.text


def test_batch_reports_bad_and_huge_images_one_by_one():
    files = [("images", ("ok.jpg", jpeg(64, 48), "image/jpeg")), ("images", ("cut.jpg", jpeg(160, 120)[:4000], "image/jpeg")),
             ("images", ("bomb.png", png_header(40_000, 40_000), "image/png")), ("images", ("empty.jpg", b"", "image/jpeg"))]
    results = call(stub_app(), "POST", "/v1/segment/batch", files=files).json()["results"]
    assert [(r["name"], r.get("status", 200)) for r in results] == [("ok.jpg", 200), ("cut.jpg", 400), ("bomb.png", 413),
                                                                  ("empty.jpg", 400)]
    assert "truncated" in results[1]["error"] and "pixels" in results[2]["error"] and "empty" in results[3]["error"]


@pytest.mark.parametrize("method, url, status", [("GET", "/v1/segment", 405), ("POST", "/healthz", 405),
                                                 ("DELETE", "/v1/models", 405), ("GET", "/v2/nothing", 404)])
def test_wrong_methods_and_paths_get_json_errors(method, url, status):
    r = call(stub_app(), method, url)
    assert r.status_code == status and r.json()["error"], r.text


def test_request_timeout_and_full_queue():
    slow = create_app(StubPredictor(delay=0.5), limits=Limits(timeout_s=0.1, max_queue=1), max_batch=1)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=slow), base_url="http://test") as client:
            post = lambda: client.post("/v1/segment", content=jpeg(8, 8), headers={"content-type": "image/jpeg"})  # noqa: E731
            return await asyncio.gather(*(post() for _ in range(4)))

    statuses = sorted(r.status_code for r in asyncio.run(go()))
    assert set(statuses) <= {503, 504} and 503 in statuses and 504 in statuses, statuses
    time.sleep(1.0)  # the timed-out work drains; then the server answers again
    slow.state.workers.predictor.delay = 0.0
    assert call(slow, "POST", "/v1/segment", content=jpeg(8, 8), headers={"content-type": "image/jpeg"}).status_code == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app):
    """`app` on uvicorn at 127.0.0.1 in a thread: yields its base URL, stops it after."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        assert server.started, "uvicorn did not start within 20 s"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def post_at_once(url: str, bodies: list[bytes]) -> list:
    """One client thread per body, all posting to /v1/segment together; their responses in order."""
    results = [None] * len(bodies)

    def client(i):
        with httpx.Client(base_url=url, timeout=30) as c:
            results[i] = c.post("/v1/segment", content=bodies[i], headers={"content-type": "image/jpeg"})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=40)
    return results


def test_concurrent_clients_on_a_real_server_run_on_every_worker(photo_bytes):
    """10 clients at once against uvicorn on 127.0.0.1, good and bad images mixed, 2 workers: every answer
    right, two requests segmented at a time and never more, and the server serves on afterwards."""
    stub = StubPredictor(delay=0.3)  # long enough for the other requests to queue up, even on a busy machine
    bodies = [photo_bytes] * 8 + [b"not an image", photo_bytes[:2000]]
    with serving(create_app(stub, model_name="stub", workers=2)) as url:
        results = post_at_once(url, bodies)
        assert all(r is not None for r in results)
        assert [r.status_code for r in results] == [200] * 8 + [400, 400], [r.text for r in results]
        masks = [png(r) for r in results[:8]]
        assert all(m.shape == (320, 240) and np.array_equal(m, masks[0]) for m in masks)
        assert stub.batch_sizes == [1] * 8 and stub.most_at_once == 2
        timing = results[0].headers["server-timing"]
        assert all(f"{stage};dur=" in timing for stage in ("queue", "decode", "predict", "render", "encode"))
        assert httpx.get(f"{url}/healthz").json()["images"] == 8


def test_waiting_requests_are_batched_when_asked():
    stub = StubPredictor(delay=0.3)
    app = create_app(stub, model_name="stub", max_batch=8, workers=1)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            post = lambda: client.post("/v1/segment", content=jpeg(32, 24), headers={"content-type": "image/jpeg"})  # noqa: E731
            return await asyncio.gather(*(post() for _ in range(8)))

    assert all(r.status_code == 200 and png(r).shape == (24, 32) for r in asyncio.run(go()))
    assert sum(stub.batch_sizes) == 8 and len(stub.batch_sizes) < 8 and stub.most_at_once == 1, stub.batch_sizes


def test_the_server_runs_on_onnx_runtime_without_torch(photo_bytes, tmp_path):
    """The light install plus the serve extra: the default model on ONNX Runtime behind the app, and
    `personseg serve`'s parser, with torch and the rest of the train extra unimportable."""
    from test_torch_free import SHIPPED_ONNX, run_without_torch

    if "accurate" not in SHIPPED_ONNX:
        pytest.skip("no personseg/weights/accurate.onnx: run python scripts/ship_onnx.py accurate")
    (tmp_path / "photo.jpg").write_bytes(photo_bytes)
    result = run_without_torch("""
        import asyncio, io, sys
        import httpx
        import numpy as np
        from PIL import Image
        import personseg
        from personseg.cli import build_parser
        from personseg.serve import create_app

        build_parser(["serve"]).parse_args(["serve", "--workers", "2"])
        predictor = personseg.load(spinning=False, threads=1)
        app = create_app(predictor, model_name="accurate", workers=2)

        async def go():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                return await client.post("/v1/segment", content=open(sys.argv[1], "rb").read(),
                                         headers={"content-type": "image/jpeg"})

        r = asyncio.run(go())
        assert r.status_code == 200, r.text
        mask = np.asarray(Image.open(io.BytesIO(r.content)))
        assert mask.shape == (320, 240) and 0.2 < (mask == 255).mean() < 0.9, mask.shape
        assert predictor.backend == "onnx" and "torch" not in sys.modules
        print("ok")
    """, str(tmp_path / "photo.jpg"))
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr
