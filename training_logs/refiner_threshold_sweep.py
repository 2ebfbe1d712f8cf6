"""Real validation folders' pooled IoU and boundary F of the analytic filter ("guided") or a refiner file at
several mask thresholds (the model's is 0.6), the model run once per photo. From the repository root:

    python training_logs/refiner_threshold_sweep.py guided training_logs/refiner8/refiner.onnx
"""
import sys
from pathlib import Path
sys.path.insert(0, "."); sys.path.insert(0, "benchmarks")
from matting import Cached, FOLDERS
from personseg.evaluate import evaluate_folders
from personseg.predict import load
from personseg.refiner import DeepRefiner
data = Path("../shared/data")
p = load("accurate", refine="deep", threads=1, spinning=False)
cache = {}
THRESHOLDS = (0.4, 0.45, 0.5, 0.55, 0.6)
for onnx in sys.argv[1:]:
    p.refiner = DeepRefiner(onnx, threads=1) if onnx != "guided" else None
    for t in THRESHOLDS:
        c = Cached(p, "guided" if onnx == "guided" else "deep", cache)
        c.threshold = t
        r = evaluate_folders(c, [data / f for f in FOLDERS], "val")
        o = r["overall"]
        print(onnx.split("/")[-2] if "/" in onnx else onnx, t, f"IoU {o['iou']:.4f} F {o['boundary_f']:.4f} P {o['precision']:.4f} R {o['recall']:.4f} |",
              " ".join(f"{k} {v['iou']:.4f}" for k, v in r["per_folder"].items()), flush=True)
