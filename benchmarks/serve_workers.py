"""The server's own work per request (decode, predict, mask, PNG: `personseg.serve.Workers`, no HTTP) with
two one-thread workers against one two-thread worker, in alternating rounds (the load of a shared machine
drifts): the measurement behind `personseg serve`'s default --workers.

    python benchmarks/serve_workers.py [--rounds 3] [--jobs 48]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import personseg
from personseg.serve import Job, Limits, Workers

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", default=str(REPO / ".." / "shared" / "data" / "portraits" / "images"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=48, help="images submitted at once per round (default: 48)")
    args = parser.parse_args()
    datas = [p.read_bytes() for p in sorted(Path(args.photos).glob("*.jpg"))[:16]]
    print(f"load average {os.getloadavg()[0]:.1f}; {len(datas)} photos from {args.photos}, default model, "
          f"{args.jobs} jobs submitted at once")
    pools = {(w, t): Workers(personseg.load(threads=t, spinning=False), Limits(), workers=w) for w, t in ((2, 1), (1, 2))}
    rates: dict = {key: [] for key in pools}
    for i in range(args.rounds):
        for (workers, threads), pool in pools.items():
            [f.result() for f in [pool.submit(Job("warm-up", datas[j % len(datas)])) for j in range(4)]]
            start = time.perf_counter()
            [f.result() for f in [pool.submit(Job("x", datas[j % len(datas)])) for j in range(args.jobs)]]
            rates[(workers, threads)].append(args.jobs / (time.perf_counter() - start))
            print(f"round {i}: workers={workers},threads={threads}: {rates[(workers, threads)][-1]:.2f} images/s, "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
    for (workers, threads), values in rates.items():
        print(f"workers={workers},threads={threads}: mean {sum(values) / len(values):.2f} images/s")
    for pool in pools.values():
        pool.close()


if __name__ == "__main__":
    main()
