"""Load test of `personseg serve` on loopback: throughput against in-process predict(), latency at 1/4/16
clients, with and without request batching, and RSS growth over 1,000 requests after warm-up.

    python benchmarks/serve.py                      # the shipped fast model, 8 real portraits
    python benchmarks/serve.py --model accurate --long-side 800

The server is a `personseg serve` subprocess on 127.0.0.1 (its own process, as in use); the clients are
threads here. Every phase has a request count and a deadline, and the server is stopped at the end.
"""
from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def photos(folder: Path, count: int, long_side: int) -> list[bytes]:
    """The first `count` JPEGs of `folder`, scaled to `long_side` pixels on the long side, as JPEG bytes."""
    out = []
    for path in sorted(folder.glob("*.jpg"))[:count]:
        im = Image.open(path).convert("RGB")
        scale = long_side / max(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
        buffer = io.BytesIO()
        im.save(buffer, "JPEG", quality=92)
        out.append(buffer.getvalue())
    if not out:
        sys.exit(f"no .jpg photos in {folder}")
    return out


def in_process(model: str, images: list[bytes], seconds: float) -> float:
    """Images per second of predictor.predict() on decoded photos, one after another."""
    import personseg

    predictor = personseg.load(model)
    arrays = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in images]
    predictor.predict(arrays[0])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < len(arrays):
        predictor.predict(arrays[done % len(arrays)])
        done += 1
    return done / (time.perf_counter() - start)


class Server:
    """`personseg serve` in a subprocess on a free loopback port."""

    def __init__(self, model: str, max_batch: int):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "personseg", "serve", "--model", model, "--host", "127.0.0.1",
                   "--port", str(self.port), "--max-batch", str(max_batch), "--timeout", "120"]
        self.process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PERSONSEG_LOG_LEVEL": "warning"})
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=10).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
            if self.process.poll() is not None:
                sys.exit(f"the server exited with {self.process.returncode}")
        self.stop()
        sys.exit("the server did not answer /healthz within 300 s")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def load(url: str, images: list[bytes], clients: int, requests: int, deadline_s: float) -> dict:
    """`requests` POST /v1/segment spread over `clients` threads; stops early at the deadline."""
    latencies: list[float] = []
    errors = [0]
    counter = iter(range(requests))
    lock = threading.Lock()
    stop_at = time.perf_counter() + deadline_s

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            while time.perf_counter() < stop_at:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                r = c.post("/v1/segment", content=images[i % len(images)], headers={"content-type": "image/jpeg"})
                with lock:
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors[0] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ms = sorted(1000 * x for x in latencies)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))] if ms else float("nan")
    return {"clients": clients, "done": len(ms), "errors": errors[0], "per_s": len(ms) / elapsed,
            "p50": statistics.median(ms) if ms else float("nan"), "p99": p99}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fast")
    parser.add_argument("--photos", default=str(REPO / ".." / "shared" / "data" / "portraits" / "images"))
    parser.add_argument("--count", type=int, default=8, help="photos (default: 8)")
    parser.add_argument("--long-side", type=int, default=400, help="photo size, long side (default: 400)")
    parser.add_argument("--seconds", type=float, default=20, help="in-process timing (default: 20)")
    parser.add_argument("--requests", type=int, default=40, help="requests per latency level (default: 40)")
    parser.add_argument("--rss-requests", type=int, default=1000, help="requests of the memory phase (default: 1000)")
    parser.add_argument("--rss-long-side", type=int, default=400,
                        help="photo size of the memory phase (default: 400; smaller fits a busy machine)")
    parser.add_argument("--deadline", type=float, default=300, help="seconds per phase at most (default: 300)")
    args = parser.parse_args()

    images = photos(Path(args.photos), args.count, args.long_side)
    w, h = Image.open(io.BytesIO(images[0])).size
    print(f"model {args.model}; {len(images)} photos from {args.photos}, {w}x{h}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    baseline = in_process(args.model, images, args.seconds)
    print(f"in-process predict(): {baseline:.2f} images/s")

    for max_batch in (1, 8):
        server = Server(args.model, max_batch)
        try:
            load(server.url, images, 4, 8, args.deadline)  # warm-up
            print(f"\nserver --max-batch {max_batch}:")
            for clients in (1, 4, 16):
                r = load(server.url, images, clients, max(args.requests, clients), args.deadline)
                ratio = f"  ({r['per_s'] / baseline:.2f}x in-process)" if clients == 4 else ""
                print(f"  {clients:2d} clients: {r['per_s']:.2f} images/s{ratio}, p50 {r['p50']:.0f} ms, "
                      f"p99 {r['p99']:.0f} ms, {r['done']} done, {r['errors']} errors")
            if max_batch == 8:
                health = httpx.get(f"{server.url}/healthz", timeout=10).json()
                print(f"  model calls {health['batches']} for {health['images']} images "
                      f"({health['images'] / max(1, health['batches']):.2f} per call)")
                small = photos(Path(args.photos), args.count, args.rss_long_side)
                load(server.url, small, 4, 50, args.deadline)  # warm-up of the memory phase
                before = server.rss_mb()
                r = load(server.url, small, 4, args.rss_requests, 3 * args.deadline)
                after = server.rss_mb()
                sw, sh = Image.open(io.BytesIO(small[0])).size
                print(f"  RSS over {r['done']} requests ({sw}x{sh} photos, 4 clients) after warm-up: "
                      f"{before:.0f} -> {after:.0f} MB ({after - before:+.1f} MB), {r['errors']} errors")
        finally:
            server.stop()
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
