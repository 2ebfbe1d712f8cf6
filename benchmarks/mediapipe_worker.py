"""MediaPipe selfie segmentation as a subprocess of benchmarks/peers.py, run by the python of
benchmarks/.venv-mediapipe (mediapipe==0.10.21 needs numpy<2, so it cannot share the project's venv).

    benchmarks/.venv-mediapipe/bin/python benchmarks/mediapipe_worker.py --model 0

Protocol on stdin / stdout, one photo at a time, so that MediaPipe sees exactly the pixels personseg's
reader decoded (no second decoder): the parent writes a request, int32 little-endian (H, W) followed by
H*W*3 bytes of RGB uint8; the worker answers with a float64 ms (the time of `process()` alone, which
includes MediaPipe's own resize to its input and back) followed by H*W float32, the person
probability at the photo's size. A request with H = 0 ends the worker. Only this file imports mediapipe.
"""
import argparse
import os
import struct
import sys
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=int, choices=[0, 1], required=True,
                        help="0: general (256x256 input), 1: landscape (144x256)")
    parser.add_argument("--threads", type=int, default=0,
                        help="pin the worker to this many CPUs (the legacy solution has no thread setting); 0: all")
    args = parser.parse_args()
    if args.threads:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    # The protocol owns the real stdout; anything MediaPipe or absl print goes to stderr.
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    proto_in = sys.stdin.buffer

    import mediapipe as mp

    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=args.model) as model:
        while True:
            header = proto_in.read(8)
            if len(header) < 8:
                return
            h, w = struct.unpack("<ii", header)
            if h == 0:
                return
            rgb = np.frombuffer(proto_in.read(h * w * 3), np.uint8).reshape(h, w, 3)
            start = time.perf_counter()
            mask = model.process(rgb).segmentation_mask
            ms = (time.perf_counter() - start) * 1000
            if mask is None or mask.shape != (h, w):
                raise RuntimeError(f"MediaPipe returned {None if mask is None else mask.shape} for a {h}x{w} photo")
            proto_out.write(struct.pack("<d", ms) + np.ascontiguousarray(mask, np.float32).tobytes())
            proto_out.flush()


if __name__ == "__main__":
    main()
