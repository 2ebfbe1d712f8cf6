"""`personseg serve`: every endpoint through httpx, bad inputs and limits, and concurrent clients on a real
uvicorn server bound to 127.0.0.1. The shipped `fast` model on small real photos; a stub predictor where the
test is about the server, not the model."""
import asyncio
import base64
import io
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason='the server needs FastAPI: pip install "personseg[serve]"')
httpx = pytest.importorskip("httpx", reason='the API tests need httpx: pip install "personseg[serve]"')

from personseg.serve import Limits, create_app  # noqa: E402


class StubPredictor:
    """Alpha = a left-to-right ramp; `delay` seconds per batch; records batch sizes."""
    threshold = 0.5
    input_size = (64, 64)

    def __init__(self, delay: float = 0.0):
        self.delay, self.batch_sizes = delay, []

    def predict_batch(self, images, batch_size=8):
        time.sleep(self.delay)
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


def test_request_timeout_and_full_queue():
    slow = create_app(StubPredictor(delay=0.5), limits=Limits(timeout_s=0.1, max_queue=1), max_batch=1)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=slow), base_url="http://test") as client:
            post = lambda: client.post("/v1/segment", content=jpeg(8, 8), headers={"content-type": "image/jpeg"})  # noqa: E731
            return await asyncio.gather(*(post() for _ in range(4)))

    statuses = sorted(r.status_code for r in asyncio.run(go()))
    assert set(statuses) <= {503, 504} and 503 in statuses and 504 in statuses, statuses
    time.sleep(1.0)  # the timed-out work drains; then the server answers again
    slow.state.batcher.predictor.delay = 0.0
    assert call(slow, "POST", "/v1/segment", content=jpeg(8, 8), headers={"content-type": "image/jpeg"}).status_code == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_concurrent_clients_on_a_real_server_are_batched(photo_bytes):
    """8 clients at once against uvicorn on 127.0.0.1: every answer right, and waiting requests were run
    together (fewer model calls than images)."""
    import uvicorn

    stub = StubPredictor(delay=0.3)  # long enough for the other requests to queue up, even on a busy machine
    app = create_app(stub, model_name="stub")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        assert server.started, "uvicorn did not start within 20 s"
        results = [None] * 8

        def client(i):
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as c:
                results[i] = c.post("/v1/segment", content=photo_bytes, headers={"content-type": "image/jpeg"})

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert all(r is not None and r.status_code == 200 for r in results)
        masks = [png(r) for r in results]
        assert all(m.shape == (320, 240) and np.array_equal(m, masks[0]) for m in masks)
        assert sum(stub.batch_sizes) == 8 and len(stub.batch_sizes) < 8, stub.batch_sizes
    finally:
        server.should_exit = True
        thread.join(timeout=10)
