"""How much of a model's validation error is the data's labelling convention rather than a miss?

The portraits and ccp masks label one main person: bystanders, passengers and people in the background
are background there (see ../shared/data/README.md), while the shipped models are meant to find every
person. For each validation image this scores the thresholded mask three ways, pooled per folder:

- as predicted (the model card's figure);
- oracle: predicted regions (8-connected) that do not touch the labelled person removed. It reads the
  ground truth, so it is not a method: it bounds what the convention costs (a removed region is a
  bystander, or a false alarm apart from the person);
- largest: only the largest predicted region kept, with its soft edge (`personseg.load(keep="largest")`,
  `--keep largest`), a method a user can pick for one-person cut-outs.

    PERSONSEG_DATA=../shared/data python benchmarks/label_conventions.py [--model accurate]
"""

import argparse
import os
from pathlib import Path

import cv2
import numpy as np
import torch

import personseg
from personseg.evaluate import list_pairs, read_mask
from personseg.imageio import read_image
from personseg.predict import keep_largest

FOLDERS = ["portraits", "ccp", "hsd"]


def touching_regions(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """`pred` without its 8-connected regions that share no pixel with `gt` (both bool)."""
    count, labels = cv2.connectedComponents(pred.astype(np.uint8), connectivity=8)
    touches = np.zeros(count, bool)
    touches[np.unique(labels[pred & gt])] = True
    return pred & touches[labels]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="accurate", help="shipped model name or checkpoint (default: accurate)")
    parser.add_argument("--data", default=os.environ.get("PERSONSEG_DATA", "../shared/data"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    seg = personseg.load(args.model)
    print(f"{args.model}: pooled IoU on the validation split, threshold {seg.threshold:.2f}, tta {seg.tta}")
    print(f"{'folder':<10} {'images':>6} {'predicted':>9} {'oracle':>7} {'largest':>8}  images with a region apart")
    for folder in FOLDERS:
        counts = {k: np.zeros(2) for k in ("predicted", "oracle", "largest")}
        apart = 0
        pairs = list_pairs(Path(args.data) / folder, "val")
        for image_path, mask_path in pairs:
            rgb = read_image(image_path)
            gt = read_mask(mask_path, rgb.shape[:2])[0] > 127
            alpha = seg.predict(rgb)
            pred = alpha >= seg.threshold
            oracle = touching_regions(pred, gt)
            apart += bool((pred & ~oracle).any())
            largest = keep_largest(alpha, seg.threshold) >= seg.threshold
            masks = {"predicted": pred, "oracle": oracle, "largest": largest}
            for name, m in masks.items():
                counts[name] += [np.sum(m & gt), np.sum(m | gt)]
        ious = {name: inter / union for name, (inter, union) in counts.items()}
        print(f"{folder:<10} {len(pairs):>6} {ious['predicted']:>9.4f} {ious['oracle']:>7.4f} {ious['largest']:>8.4f}"
              f"  {apart}", flush=True)


if __name__ == "__main__":
    main()
