"""Experiment: a learned per-region classifier on encoder features (is this connected region a person?)."""
import pickle
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, ".")
from personseg.evaluate import IGNORE, list_items  # noqa
from personseg.folders import list_images, split_items  # noqa
from personseg.imageio import read_image  # noqa
import personseg  # noqa

DATA = Path("/work/shared/data")
torch.set_num_threads(1)
pred = personseg.load("personseg/weights/accurate.pt", threads=1)
pred.presence_threshold = float(sys.argv[2]) if len(sys.argv) > 2 else pred.presence_threshold
feats = {}
pred.model.encoder.register_forward_hook(lambda m, i, o: feats.__setitem__("f", [t[0].float().numpy() for t in o[-2:]]))


def region_rows(rgb, truth):
    size = pred.spec.model_size(*rgb.shape[:2])
    probs, _, small = pred._forward([rgb], size)
    prob = probs[0]
    h, w = prob.shape
    f16, f32 = feats["f"]
    mask = (prob >= pred.threshold).astype(np.uint8)
    n, labels, stats, cent = cv2.connectedComponentsWithStats(mask, connectivity=8)
    rows = []
    if truth is not None:
        person = cv2.resize((truth == 255).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        valid = cv2.resize((truth != IGNORE).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    for k in range(1, n):
        reg = (labels == k).astype(np.float32)
        vec = []
        for f in (f16, f32):
            C, gh, gw = f.shape
            s = 16 if f is f16 else 32
            pad = np.zeros((gh * s, gw * s), np.float32)
            pad[:h, :w] = reg
            wgt = cv2.resize(pad, (gw, gh), interpolation=cv2.INTER_AREA).ravel()
            ff = f.reshape(C, -1)
            if wgt.sum() < 1e-9:
                wgt = np.zeros_like(wgt)
                wgt[int(cent[k][1] // s) * gw + int(cent[k][0] // s)] = 1
            vec.append(ff @ wgt / wgt.sum())
            vec.append(ff[:, wgt > 0].max(1))
        area = stats[k, cv2.CC_STAT_AREA]
        p = prob[labels == k]
        x0, y0, bw, bh = stats[k, :4]
        extra = [np.log(area / (h * w)), p.mean(), p.max(), float(x0 == 0 or y0 == 0 or x0 + bw == w or y0 + bh == h),
                 bh / h, bw / w]
        row = {"x": np.concatenate(vec + [np.array(extra, np.float32)]), "area": area}
        if truth is not None:
            pv = (person * reg).sum()
            vv = (valid * reg).sum()
            row["person_frac"] = pv / max(vv, 1e-6)
            row["valid_frac"] = vv / area
        rows.append(row)
    return prob, labels, small, rows


def cache(split, folders, out, limit=None):
    res = []
    for folder in folders:
        if folder in ("negatives/images", "composites/backgrounds"):
            items = [(p, None) for p in split_items(list_images(DATA / folder), split)]
        else:
            items = list_items(DATA / folder, split)
        if limit:
            items = items[:limit.get(folder, len(items))]
        for path, truth_of in tqdm(items, desc=f"{folder} {split}"):
            rgb = read_image(path)
            truth = truth_of(rgb.shape[:2])[0] if truth_of else np.zeros(rgb.shape[:2], np.uint8)
            with torch.inference_mode():
                prob, labels, small, rows = region_rows(rgb, truth)
            rec = {"folder": folder, "rows": rows}
            if split != "train":
                rec.update(path=str(path), prob=prob, labels=labels)
            res.append(rec)
    pickle.dump(res, open(out, "wb"))


if __name__ == "__main__":
    which = sys.argv[1]
    if which == "train":
        cache("train", ["coco", "negatives/images", "pennfudan", "portraits", "ccp", "hsd", "composites/backgrounds"],
              "/tmp/regions_train.pkl", limit={"portraits": 300, "ccp": 200, "hsd": 150, "composites/backgrounds": 200})
    else:
        cache(which, ["portraits", "ccp", "hsd", "coco", "negatives", "pennfudan"], f"/tmp/regions_{which}.pkl")
