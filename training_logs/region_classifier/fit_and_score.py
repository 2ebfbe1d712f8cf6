import pickle
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, ".")
sys.path.insert(0, "scripts")
import personseg  # noqa
from personseg.evaluate import IGNORE, list_items  # noqa
from personseg.imageio import read_image  # noqa
from fit_presence import fit  # noqa: the presence head's logistic regression, with sample weights

DATA = Path("/work/shared/data")
torch.set_num_threads(1)


def auroc(s, y, wt):
    o = np.argsort(s)
    s, y, wt = s[o], y[o], wt[o]
    pos = np.cumsum(wt * (1 - y))  # negatives below
    return float((wt * y * pos).sum() / ((wt * y).sum() * (wt * (1 - y)).sum()))


def dataset(recs):
    X, Y, A = [], [], []
    for r in recs:
        for row in r["rows"]:
            if row.get("valid_frac", 1) < 0.5:
                continue
            X.append(row["x"]); Y.append(float(row["person_frac"] >= 0.5)); A.append(row["area"])
    return np.array(X, np.float64), np.array(Y), np.array(A, np.float64)


train = pickle.load(open("/tmp/regions_train.pkl", "rb"))
val = pickle.load(open("/tmp/regions_val.pkl", "rb"))
X, Y, A = dataset(train)
Xv, Yv, Av = dataset(val)
print("train regions", len(Y), "person", int(Y.sum()), "| val", len(Yv), int(Yv.sum()))
models = {}
for name, sw in (("area", A), ("sqrt", np.sqrt(A))):
    for l2 in (1.0, 10.0):
        w, b = fit(X, Y, l2, weight=sw)
        sv = Xv @ w + b
        print(f"{name} l2={l2}: val AUROC area-weighted {auroc(sv, Yv, Av):.3f}, count {auroc(sv, Yv, np.ones_like(Av)):.3f}")
        models[(name, l2)] = (w, b)
# baseline stats: peak prob (index -4)
print(f"peak prob AUROC area-weighted {auroc(Xv[:, -4], Yv, Av):.3f}, mean prob {auroc(Xv[:, -5], Yv, Av):.3f}")
pickle.dump(models, open("/tmp/regions_models.pkl", "wb"))

if len(sys.argv) > 1:
    pred = personseg.load("personseg/weights/accurate.pt", threads=1)
    cuts = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5]
    key = ("area", 1.0) if len(sys.argv) < 3 else (sys.argv[1], float(sys.argv[2]))
    w, b = models[key]
    counts = {}  # (folder, cut) -> tp fp fn valid, over5
    items = {}
    for folder in ("portraits", "ccp", "hsd", "coco", "negatives", "pennfudan"):
        for p, t in list_items(DATA / folder, "val"):
            items[str(p)] = t
    for rec in val:
        rgb = read_image(rec["path"])
        truth = items[rec["path"]](rgb.shape[:2])[0]
        person, valid = truth == 255, truth != IGNORE
        prob, labels = rec["prob"], rec["labels"]
        scores = np.array([1 / (1 + np.exp(-(row["x"] @ w + b))) for row in rec["rows"]])
        oracle = np.array([row["person_frac"] >= 0.5 or row["valid_frac"] < 0.5 for row in rec["rows"]])
        small = None
        for cut in cuts + ["oracle"]:
            keep = oracle if cut == "oracle" else scores >= cut
            lut = np.concatenate([[1.0], keep.astype(np.float32)]) if len(keep) else np.ones(1, np.float32)
            q = (prob * lut[labels]).astype(np.float32)
            alpha = pred.upsample(rgb, q)
            m = (alpha >= pred.threshold) & valid
            c = counts.setdefault((rec["folder"], cut), [0, 0, 0, 0, 0])
            tp, fp, fn = int((m & person).sum()), int((m & ~person).sum()), int((~m & person & valid).sum())
            c[0] += tp; c[1] += fp; c[2] += fn; c[3] += int(valid.sum()); c[4] += int(fp / valid.sum() > 0.05)
    for cut in cuts + ["oracle"]:
        parts = []
        for folder in ("portraits", "ccp", "hsd", "coco", "negatives", "pennfudan"):
            tp, fp, fn, v, o = counts[(folder, cut)]
            parts.append(f"{folder} {fp / v:.2%}/{o}" if folder == "negatives" else f"{folder} {tp / (tp + fp + fn):.4f}")
        print(f"cut {cut}: " + "  ".join(parts))
