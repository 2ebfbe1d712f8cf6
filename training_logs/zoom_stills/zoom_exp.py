import sys, numpy as np
from pathlib import Path
sys.path.insert(0, ".")
import personseg
from personseg.evaluate import evaluate_folders
from personseg.video.tracking import PersonTracker
data = Path("../shared/data")
p = personseg.load("accurate", threads=2)

class Zoom:
    def __init__(self, mode, margin):
        self.mode, self.threshold, self.t = mode, p.threshold, PersonTracker(p, margin=margin, tiles=1)
    def predict(self, rgb):
        self.t.reset()
        a = self.t.predict_batch([rgb])[0]
        if self.mode == "off" or self.t.box is None:
            return a
        x0, y0, x1, y1 = self.t.box
        b = self.t.predict_batch([rgb])[0]
        if self.mode == "crop":
            return b
        if self.mode == "max":
            return np.maximum(a, b)
        out = a.copy(); out[y0:y1, x0:x1] = b[y0:y1, x0:x1]
        return out

folders = [data / f for f in sys.argv[1].split(",")]
for mode, margin in [("off", 0.5), ("crop", 0.5), ("inside", 0.5), ("max", 0.5), ("inside", 0.25)]:
    z = Zoom(mode, margin)
    r = evaluate_folders(z, folders, "val")
    print(mode, margin, " ".join(f"{k} {v['iou']:.4f}" if not v.get("person_free") else f"{k} {v['fp_share']:.2%}" for k, v in r["per_folder"].items()), flush=True)
