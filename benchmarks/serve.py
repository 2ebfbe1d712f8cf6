"""Load test of `personseg serve` on loopback: throughput against in-process predict() on the same photos,
p50 / p99 latency at 1, 4 and 16 clients for each server setting compared, where a request's time goes
(the server's Server-Timing stages; "http" is the rest: sockets, the event loop, parsing), and RSS growth
over 1,000 requests after warm-up.

    python benchmarks/serve.py                         # the default model, 16 600x800 portraits as they are
    python benchmarks/serve.py --model fast --setting workers=1,threads=2 --setting max-batch=4

The server is a `personseg serve` subprocess on 127.0.0.1 (its own process, as in use); the clients are
threads here. Every phase has a request count and a deadline, and each server is stopped at the end. On a
shared machine the load drifts, so in-process predict() is timed again right before each level, and the
level's ratio is against that figure: the better of `personseg.load()` as it comes and with ONNX Runtime's
spin-waiting off (the server's setting, faster when other processes want the cores).
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
STAGES = ("queue", "decode", "predict", "render", "encode")


def photos(folder: Path, count: int, long_side: int) -> list[bytes]:
    """The first `count` JPEGs of `folder` as JPEG bytes: the files themselves (long_side 0), or scaled
    to `long_side` pixels on the long side."""
    out = []
    for path in sorted(folder.glob("*.jpg"))[:count]:
        if not long_side:
            out.append(path.read_bytes())
            continue
        im = Image.open(path).convert("RGB")
        scale = long_side / max(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
        buffer = io.BytesIO()
        im.save(buffer, "JPEG", quality=92)
        out.append(buffer.getvalue())
    if not out:
        sys.exit(f"no .jpg photos in {folder}")
    return out


def in_process(predictor, arrays: list[np.ndarray], seconds: float) -> float:
    """Images per second of predictor.predict() on decoded photos, one after another."""
    predictor.predict(arrays[0])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < len(arrays):
        predictor.predict(arrays[done % len(arrays)])
        done += 1
    return done / (time.perf_counter() - start)


class Server:
    """`personseg serve` in a subprocess on a free loopback port; `options` are its extra arguments."""

    def __init__(self, model: str | None, options: list[str]):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "personseg", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--timeout", "120", *(["--model", model] if model else []), *options]
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


def server_timing(header: str) -> dict[str, float]:
    """'queue;dur=1.2, decode;dur=6.0' -> {"queue": 1.2, "decode": 6.0}."""
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


def load(url: str, images: list[bytes], clients: int, requests: int, deadline_s: float) -> dict:
    """`requests` POST /v1/segment spread over `clients` threads; stops early at the deadline. Returns
    throughput, latency percentiles and the median of each server stage (ms)."""
    latencies: list[float] = []
    stages: list[dict[str, float]] = []
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
                elapsed = time.perf_counter() - t0
                with lock:
                    if r.status_code != 200:
                        errors[0] += 1
                        continue
                    latencies.append(elapsed)
                    timing = server_timing(r.headers.get("server-timing", ""))
                    timing["http"] = 1000 * elapsed - sum(timing.values())
                    stages.append(timing)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ms = sorted(1000 * x for x in latencies)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))] if ms else float("nan")
    median = {k: statistics.median(s.get(k, 0.0) for s in stages) for k in (*STAGES, "http")} if stages else {}
    return {"clients": clients, "done": len(ms), "errors": errors[0], "per_s": len(ms) / elapsed,
            "p50": statistics.median(ms) if ms else float("nan"), "p99": p99, "stages": median}


def run_setting(args, setting: str, images: list[bytes], baseline, rss: bool) -> None:
    """The three latency levels on a server with `setting` ("workers=2,threads=1,max-batch=1"), each
    after `baseline()` (in-process images/s), then (rss) the memory phase."""
    options = [f"--{kv.replace('=', ' ')}".split() for kv in setting.split(",") if kv]
    server = Server(args.model, [x for option in options for x in option])
    try:
        load(server.url, images, 4, 16, args.deadline)  # warm-up: every worker's first calls
        print(f"\nserver {setting or 'defaults'}:")
        for clients in (1, 4, 16):
            base, bases = baseline()
            r = load(server.url, images, clients, max(args.requests, 2 * clients), args.deadline)
            stages = ", ".join(f"{k} {v:.0f}" for k, v in r["stages"].items())
            print(f"  {clients:2d} clients: {r['per_s']:.2f} images/s ({r['per_s'] / base:.2f}x in-process {bases}), "
                  f"p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms, {r['done']} done, {r['errors']} errors; "
                  f"median ms: {stages}")
        health = httpx.get(f"{server.url}/healthz", timeout=10).json()
        print(f"  {health['workers']} workers, {health['batches']} model calls for {health['images']} images")
        if rss:
            load(server.url, images, 4, 100, args.deadline)  # warm-up of the memory phase
            before = server.rss_mb()
            r = load(server.url, images, 4, args.rss_requests, 3 * args.deadline)
            after = server.rss_mb()
            print(f"  RSS over {r['done']} requests (4 clients) after 100 of warm-up: {before:.0f} -> {after:.0f} MB "
                  f"({after - before:+.1f} MB), {r['errors']} errors, {r['per_s']:.2f} images/s")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a shipped model or a file (default: the shipped default)")
    parser.add_argument("--photos", default=str(REPO / ".." / "shared" / "data" / "portraits" / "images"))
    parser.add_argument("--count", type=int, default=16, help="photos (default: 16)")
    parser.add_argument("--long-side", type=int, default=0, help="scale the photos to this (default: 0, as they are)")
    parser.add_argument("--seconds", type=float, default=8, help="in-process timing before each level, split between the two loads (default: 8)")
    parser.add_argument("--requests", type=int, default=64, help="requests per latency level (default: 64)")
    parser.add_argument("--rss-requests", type=int, default=1000, help="requests of the memory phase (default: 1000)")
    parser.add_argument("--setting", action="append", metavar="K=V,...",
                        help="serve options to compare, e.g. workers=1,threads=2 (repeatable; default: the "
                             "defaults, one worker, batches of 4); the memory phase runs on the first")
    parser.add_argument("--deadline", type=float, default=300, help="seconds per phase at most (default: 300)")
    args = parser.parse_args()

    import personseg

    images = photos(Path(args.photos), args.count, args.long_side)
    arrays = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in images]
    sizes = sorted({f"{a.shape[1]}x{a.shape[0]}" for a in arrays})
    print(f"model {args.model or 'default'}; {len(images)} photos from {args.photos}, {', '.join(sizes)}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    predictors = {"load()": personseg.load(args.model), "spinning=False": personseg.load(args.model, spinning=False)}
    figures = []

    def baseline() -> tuple[float, str]:
        """The better in-process images/s, and both figures as words."""
        timed = {name: in_process(p, arrays, args.seconds / 2) for name, p in predictors.items()}
        figures.append(max(timed.values()))
        return figures[-1], " / ".join(f"{name} {v:.2f}" for name, v in timed.items())

    settings = args.setting or ["", "workers=1", "max-batch=4"]
    for i, setting in enumerate(settings):
        run_setting(args, setting, images, baseline, rss=i == 0 and args.rss_requests > 0)
    print(f"\nin-process predict(): {min(figures):.2f} to {max(figures):.2f} images/s, median "
          f"{statistics.median(figures):.2f}, over {len(figures)} timings of {args.seconds:g} s")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
