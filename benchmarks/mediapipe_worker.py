"""MediaPipe selfie segmentation as a subprocess of benchmarks/peers.py, run by the python of
benchmarks/.venv-mediapipe (mediapipe==0.10.21 needs numpy<2, so it cannot share the project's venv).

    benchmarks/.venv-mediapipe/bin/python benchmarks/mediapipe_worker.py --model 0

Protocol on stdin / stdout, one photo at a time, so that MediaPipe sees exactly the pixels personseg's
reader decoded (no second decoder): the parent writes a request, int32 little-endian (H, W) followed by
H*W*3 bytes of RGB uint8; the worker answers with a float64 ms (the time of `process()` alone, which
includes MediaPipe's own resize to its input and back) followed by H*W float32, the person
probability at the photo's size. With `--task pose` (legacy mp.solutions.pose, static images, model
complexity 1: the one in the wheel) the answer after the ms is 33 x 4 float32: x, y in pixels,
visibility, and 1 if a person was found (all zeros otherwise). A request with H = 0 ends the worker.
Only this file imports mediapipe.
"""
import argparse
import os
import struct
import sys
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=int, choices=[0, 1], default=0,
                        help="selfie segmentation: 0 general (256x256 input), 1 landscape (144x256)")
    parser.add_argument("--task", choices=["selfie", "pose"], default="selfie")
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

    if args.task == "pose":
        model = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1)
    else:
        model = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=args.model)
    with model:
        while True:
            header = proto_in.read(8)
            if len(header) < 8:
                return
            h, w = struct.unpack("<ii", header)
            if h == 0:
                return
            rgb = np.frombuffer(proto_in.read(h * w * 3), np.uint8).reshape(h, w, 3)
            start = time.perf_counter()
            result = model.process(rgb)
            ms = (time.perf_counter() - start) * 1000
            answer = pose_answer(result, h, w) if args.task == "pose" else selfie_answer(result, h, w)
            proto_out.write(struct.pack("<d", ms) + answer.tobytes())
            proto_out.flush()


def selfie_answer(result, h: int, w: int) -> np.ndarray:
    mask = result.segmentation_mask
    if mask is None or mask.shape != (h, w):
        raise RuntimeError(f"MediaPipe returned {None if mask is None else mask.shape} for a {h}x{w} photo")
    return np.ascontiguousarray(mask, np.float32)


def pose_answer(result, h: int, w: int) -> np.ndarray:
    out = np.zeros((33, 4), np.float32)
    if result.pose_landmarks is not None:
        for i, lm in enumerate(result.pose_landmarks.landmark):
            out[i] = (lm.x * w, lm.y * h, lm.visibility, 1.0)
    return out


if __name__ == "__main__":
    main()
