"""Body parts and landmarks of a multi-task model (issue 14), beside MediaPipe Pose on the same photos.

    python benchmarks/parts_landmarks.py --model parts [--split val] [--limit N] [--mediapipe] [--no-flip] [--json F]

Parts: ccp's photos of --split; the truth is `personseg.parts.ccp_parts` of their label maps. Per-class
IoU of the six classes from one confusion matrix over all their pixels, and the mean IoU over five
classes with face- and body-skin counted together as ccp's `skin` (the target's definition: the split
of ccp's one skin label is a rule, personseg.parts). ccp labels only the main person, so the model runs
with keep="largest" there. MediaPipe's multiclass selfie model is a .tflite of the Tasks API that is not
in the legacy wheel and cannot be downloaded here: no peer for parts.

Landmarks: coco's photos of --split. The model's people (one skeleton per person region of its mask)
as COCO keypoint results, scored by pycocotools COCOeval (iouType "keypoints": OKS AP over the labelled
people; people without keypoints are ignored by COCOeval), and PCK@0.1: a labelled keypoint (v > 0)
counts when the matched skeleton's keypoint lies within 0.1 x the longer side of the person's box; each
labelled person is matched (largest first, one to one) to the unused skeleton with the most such
keypoints. MediaPipe Pose (legacy mp.solutions.pose, static images, complexity 1, one person a photo,
its 33 landmarks mapped to COCO's 17; score = mean visibility) runs on the same photos, in the venv of
`benchmarks/peers.py --setup`: AP and PCK over all photos, and PCK on the photos where it finds a
person (the ones it handles), with ours on the same photos beside it.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import personseg  # noqa: E402
from personseg.data import CocoPersons, LabelMaps, read_gray  # noqa: E402
from personseg.imageio import read_image  # noqa: E402
from personseg.keypoints import to_coco  # noqa: E402
from personseg.parts import PART_NAMES, ccp_parts  # noqa: E402
from peers import VENV, WORKER, venv_python  # noqa: E402

# MediaPipe Pose's landmark index of each COCO keypoint (nose, eyes, ears, shoulders, elbows, wrists, hips,
# knees, ankles; MediaPipe numbers the person's left as "left", as COCO does)
MEDIAPIPE_TO_COCO = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)


def part_scores(model_name: str, data: Path, split: str, limit: int | None) -> dict:
    predictor = personseg.load(model_name, keep="largest")
    ccp = LabelMaps(data / "ccp", split)
    pairs = ccp.pairs[:limit] if limit else ccp.pairs
    confusion = np.zeros((6, 6), np.int64)
    for image_path, label_path in pairs:
        truth = ccp_parts(read_gray(label_path), ccp.label_names)
        pred = predictor.predict_parts(read_image(image_path))
        confusion += np.bincount(truth.ravel().astype(np.int64) * 6 + pred.ravel(), minlength=36).reshape(6, 6)
    iou = lambda c: np.diag(c) / np.maximum(c.sum(0) + c.sum(1) - np.diag(c), 1)  # noqa: E731
    merged = np.delete(np.delete(confusion, 2, 0), 2, 1)  # face-skin into body-skin ("skin")
    merged[2] += np.delete(confusion[2], 2)
    merged[:, 2] += np.delete(confusion[:, 2], 2)
    merged[2, 2] += confusion[2, 2]
    five = iou(merged)
    return {"images": len(pairs), "per_class": dict(zip(PART_NAMES, iou(confusion).round(4).tolist())),
            "per_class_skin_merged": dict(zip(("background", "hair", "skin", "clothes", "accessories"),
                                              five.round(4).tolist())),
            "mean_iou": float(five.mean())}


class MediaPipePose:
    """MediaPipe Pose in its venv, through benchmarks/mediapipe_worker.py --task pose."""

    def __init__(self, venv: Path = VENV):
        self.proc = subprocess.Popen([str(venv_python(venv)), str(WORKER), "--task", "pose", "--threads", "2"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.ms: list[float] = []

    def people(self, rgb: np.ndarray) -> list[dict]:
        h, w = rgb.shape[:2]
        self.proc.stdin.write(struct.pack("<ii", h, w) + np.ascontiguousarray(rgb).tobytes())
        self.proc.stdin.flush()
        head, data = self.proc.stdout.read(8), self.proc.stdout.read(33 * 4 * 4)
        if len(data) != 33 * 16:
            raise RuntimeError("the MediaPipe Pose worker stopped; its error is above")
        self.ms.append(struct.unpack("<d", head)[0])
        landmarks = np.frombuffer(data, np.float32).reshape(33, 4)
        if landmarks[0, 3] == 0:
            return []
        k = landmarks[list(MEDIAPIPE_TO_COCO), :3].copy()
        x0, y0 = k[:, :2].min(0)
        x1, y1 = k[:, :2].max(0)
        return [{"keypoints": k, "box": (float(x0), float(y0), float(x1), float(y1)), "score": float(k[:, 2].mean())}]

    def close(self) -> None:
        self.proc.stdin.write(struct.pack("<ii", 0, 0))
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def pck(truth: list[dict], found: list[dict], fraction: float = 0.1) -> tuple[int, int]:
    """(correct, labelled) keypoints of one photo's labelled people against its skeletons (module doc)."""
    correct = labelled = 0
    unused = list(range(len(found)))
    for person in sorted(truth, key=lambda a: -a["area"]):
        k = np.asarray(person["keypoints"], np.float32).reshape(17, 3)
        seen = k[:, 2] > 0
        reach = fraction * max(person["bbox"][2], person["bbox"][3])
        hits = [(int((np.linalg.norm(found[j]["keypoints"][:, :2] - k[:, :2], axis=1) <= reach)[seen].sum()), j)
                for j in unused]
        best, j = max(hits, default=(0, None))
        if j is not None:
            unused.remove(j)
        correct, labelled = correct + best, labelled + int(seen.sum())
    return correct, labelled


def oks_ap(coco, image_ids: list[int], results: list[dict]) -> float:
    from pycocotools.cocoeval import COCOeval

    if not results:
        return 0.0
    for ann in coco.dataset["annotations"]:  # COCOeval reads num_keypoints; persons without keypoints lack it
        ann.setdefault("num_keypoints", 0)
        ann.setdefault("keypoints", [0] * 51)
    with contextlib.redirect_stdout(io.StringIO()):
        found = coco.loadRes(results)
        evaluation = COCOeval(coco, found, "keypoints")
        evaluation.params.imgIds = image_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0])


def landmark_scores(model_name: str, data: Path, split: str, limit: int | None, mediapipe: bool,
                    flip: bool = True) -> dict:
    predictor = personseg.load(model_name)
    source = CocoPersons(data / "coco" / "images", data / "coco" / "annotations.json", split, limit=limit or 0)
    coco, ids = source.coco, source.ids
    peers = {"personseg": lambda rgb: predictor.predict_landmarks(rgb, flip)}
    pose = MediaPipePose() if mediapipe else None
    if pose:
        peers["mediapipe_pose"] = pose.people
    results = {name: [] for name in peers}
    counts = {name: [0, 0] for name in peers}
    handled = {name: [0, 0] for name in peers}  # on the photos MediaPipe finds a person in
    ms = {name: [] for name in peers}
    for image_id in ids:
        rgb = read_image(data / "coco" / "images" / coco.imgs[image_id]["file_name"])
        truth = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)) if a.get("num_keypoints")]
        found = {}
        for name, fn in peers.items():
            start = time.perf_counter()
            found[name] = fn(rgb)
            ms[name].append((time.perf_counter() - start) * 1000)
            results[name] += to_coco(found[name], image_id=image_id)
        mediapipe_found = bool(pose and found["mediapipe_pose"])
        for name, people in found.items():
            c, n = pck(truth, people)
            for tally in [counts[name], handled[name]] if mediapipe_found else [counts[name]]:
                tally[0] += c
                tally[1] += n
    if pose:
        pose.close()
    labelled = [a for i in ids for a in coco.loadAnns(coco.getAnnIds(imgIds=i, iscrowd=False)) if a.get("num_keypoints")]
    out = {"images": len(ids), "people_with_keypoints": len(labelled)}
    for name in peers:
        out[name] = {"oks_ap": oks_ap(coco, ids, results[name]), "pck@0.1": counts[name][0] / max(1, counts[name][1]),
                     "ms_per_photo": float(np.median(ms[name]))}
        if pose:
            out[name]["pck@0.1_on_photos_mediapipe_handles"] = handled[name][0] / max(1, handled[name][1])
    if pose:
        out["photos_mediapipe_handles"] = len({x["image_id"] for x in results["mediapipe_pose"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="parts", help="a multi-task checkpoint, .onnx or shipped name")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--split", default="val", choices=["val", "holdout"])
    parser.add_argument("--limit", type=int, help="photos per folder (default: all of the split)")
    parser.add_argument("--mediapipe", action="store_true", help="MediaPipe Pose beside it (peers.py --setup first)")
    parser.add_argument("--no-flip", dest="flip", action="store_false",
                        help="keypoints from the crop alone (default: the crop and its mirror image averaged)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = {"model": args.model, "split": args.split, "flip": args.flip,
               "parts": part_scores(args.model, args.data, args.split, args.limit),
               "landmarks": landmark_scores(args.model, args.data, args.split, args.limit, args.mediapipe, args.flip)}
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
