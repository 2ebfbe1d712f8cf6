"""Ship a model as ONNX inside the package: personseg/weights/NAME.pt -> personseg/weights/NAME.onnx,
the file `personseg.load(NAME)`, `personseg segment` and `personseg video` run on ONNX Runtime (no torch).

    python scripts/ship_onnx.py accurate          # after scripts/ship_model.py has written accurate.pt
    python scripts/ship_onnx.py fast --limit 40   # a quick look (decisions on 40 images a folder)

Steps, each printed with what it decided:
1. Export NAME.pt to fp32 ONNX (dynamic batch, height and width; `personseg.export.export_onnx`, whose
   parity check compares ONNX Runtime with PyTorch logits on random inputs), then check the full
   predictors (resize, network, guided filter) agree on real validation photos: max abs alpha difference.
2. Mirror TTA only where it pays: score the fp32 predictor with and without it on every validation
   folder; TTA is the default when it gains at least --tta-gain IoU on average over the folders with
   people (it doubles the network's time). The measurement goes into the metadata (`tta_measured`).
3. int8: ONNX Runtime static quantization (QDQ, per-channel weights, MinMax ranges over
   --calib-count training images; `personseg.export.quantize_int8`), kept only if it costs under
   --int8-cost IoU on every folder with people and adds under --int8-cost to the false-positive share
   of the person-free one (negatives); else fp32 ships.
4. Write NAME.onnx (atomically) with the metadata of the .pt (threshold, input_size, mean, std, card),
   the TTA default, the int8 decision and the .pt's sha256 (`personseg.load` warns when the .pt
   beside it has changed since).

Needs the train extra (torch, onnx) and the data ($PERSONSEG_DATA, default ../shared/data).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from personseg.evaluate import evaluate_folders  # noqa: E402
from personseg.export import (calibration_images, calibration_inputs, export_onnx, quantize_int8,  # noqa: E402
                              set_metadata)
from personseg.imageio import list_inputs, read_image  # noqa: E402
from personseg.predict import WEIGHTS_DIR, InputSpec, Predictor, file_sha256  # noqa: E402

FOLDERS = ("portraits", "ccp", "hsd", "coco", "pennfudan", "negatives")
# Mean IoU gain for which mirror TTA (twice the network's time) is on by default. `fast` is the real-time
# preset, whose time target (no slower than MediaPipe) leaves room for a second pass only for a large gain.
TTA_GAIN = {"fast": 0.02}
DEFAULT_TTA_GAIN = 0.005
PERSON_FREE = "negatives"


def score(predictor: Predictor, folders: list[Path], limit: int | None) -> dict:
    """{folder: {"iou" | "fp_share", "ms", "images"}} on the validation split."""
    result = evaluate_folders(predictor, folders, split="val", limit=limit)
    out = {}
    for name, m in result["per_folder"].items():
        key = "fp_share" if m.get("person_free") else "iou"
        out[name] = {key: round(float(m[key]), 5), "ms": round(float(m["ms_per_image"]), 2), "images": m["images"]}
    return out


def person_mean(scores: dict) -> float:
    return float(np.mean([s["iou"] for s in scores.values() if "iou" in s]))


def mean_ms(scores: dict) -> float:
    return float(np.mean([s["ms"] for s in scores.values()]))


def table(rows: dict[str, dict]) -> str:
    """rows: label -> scores; one line a folder."""
    labels = list(rows)
    folders = list(next(iter(rows.values())))
    lines = [f"  {'folder':<11}" + "".join(f"{label:>22}" for label in labels)]
    for f in folders:
        cells = []
        for label in labels:
            s = rows[label][f]
            metric = f"IoU {s['iou']:.4f}" if "iou" in s else f"FP {s['fp_share']:.4%}"
            cells.append(f"{metric} {s['ms']:5.1f}ms")
        lines.append(f"  {f:<11}" + "".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def alpha_parity(eager: Predictor, onnx: Predictor, photos: list[Path]) -> float:
    worst = 0.0
    for path in photos:
        rgb = read_image(path)
        worst = max(worst, float(np.abs(eager.predict(rgb) - onnx.predict(rgb)).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="a shipped model: personseg/weights/NAME.pt")
    parser.add_argument("--data", default=os.environ.get("PERSONSEG_DATA", str(REPO.parent / "shared" / "data")),
                        help="the data root with the validation folders (default: $PERSONSEG_DATA or ../shared/data)")
    parser.add_argument("--limit", type=int, help="at most this many validation images a folder (default: all)")
    parser.add_argument("--tta-gain", type=float,
                        help=f"mean IoU gain over the person folders for which TTA is on by default "
                             f"(default: {DEFAULT_TTA_GAIN}; fast: {TTA_GAIN['fast']}, the real-time preset)")
    parser.add_argument("--int8-cost", type=float, default=0.002,
                        help="the most IoU (and false-positive share) int8 may cost on any folder (0.002)")
    parser.add_argument("--calib-count", type=int, default=64, help="int8 calibration images (64)")
    parser.add_argument("--no-int8", action="store_true", help="ship fp32 without trying int8")
    args = parser.parse_args(argv)
    if args.tta_gain is None:
        args.tta_gain = TTA_GAIN.get(args.name, DEFAULT_TTA_GAIN)

    pt = WEIGHTS_DIR / f"{args.name}.pt"
    out = WEIGHTS_DIR / f"{args.name}.onnx"
    if not pt.is_file():
        print(f"ship_onnx: no {pt}; ship the checkpoint first (scripts/ship_model.py)", file=sys.stderr)
        return 2
    data = Path(args.data)
    folders = [data / f for f in FOLDERS if (data / f).is_dir()]
    missing = [f for f in FOLDERS if not (data / f).is_dir()]
    if not folders:
        print(f"ship_onnx: no validation folders in {data}; pass --data", file=sys.stderr)
        return 2
    if missing:
        print(f"note: no {', '.join(missing)} in {data}: decided without them")

    eager = Predictor.from_checkpoint(pt, tta=False)
    info = eager.info
    meta = dict(info.get("meta", {}))
    with tempfile.TemporaryDirectory(dir=WEIGHTS_DIR, prefix=".ship_onnx.") as tmp:
        tmp = Path(tmp)
        fp32 = tmp / "fp32.onnx"
        t0 = time.perf_counter()
        result = export_onnx(eager.model, info, fp32)
        print(f"1. exported {pt.name} to fp32 ONNX in {time.perf_counter() - t0:.1f} s; ONNX Runtime vs PyTorch, "
              f"max abs logit difference: {', '.join(f'{k} {v:.1e}' for k, v in result['max_abs_diff'].items())}")
        fp32_seg = Predictor.from_onnx(fp32, tta=False)
        photos = [p for f in folders[:3] for p in list_inputs([str(f / "images")])[:2]]
        parity = alpha_parity(eager, fp32_seg, photos)
        print(f"   full predictor (resize, network, guided filter) on {len(photos)} real photos: "
              f"max abs alpha difference {parity:.1e}")
        if parity > 1e-3:
            print("ship_onnx: the ONNX predictor differs from the checkpoint's by more than 1e-3; not shipped",
                  file=sys.stderr)
            return 1

        plain = score(fp32_seg, folders, args.limit)
        fp32_seg.tta = True
        mirrored = score(fp32_seg, folders, args.limit)
        gain = person_mean(mirrored) - person_mean(plain)
        tta = gain >= args.tta_gain
        print(f"2. mirror TTA on the validation split (fp32, ms per photo end to end on this machine):\n"
              + table({"TTA off": plain, "TTA on": mirrored})
              + f"\n   mean IoU gain {gain:+.4f} for {mean_ms(mirrored) / mean_ms(plain):.2f}x the time: "
              f"TTA {'ON' if tta else 'OFF'} by default (rule: gain >= {args.tta_gain})")
        chosen = mirrored if tta else plain
        tta_measured = {"folders": {f: {"off": plain[f], "on": mirrored[f]} for f in plain},
                        "mean_iou_gain": round(gain, 5), "rule": f"on if mean IoU gain >= {args.tta_gain}",
                        "limit": args.limit}

        ship, precision, int8_note = fp32, "fp32", "not tried (--no-int8)"
        if not args.no_int8:
            paths = calibration_images(data, args.calib_count)
            inputs = list(calibration_inputs(paths, InputSpec.from_info(info)))
            int8 = tmp / "int8.onnx"
            quantize_int8(fp32, int8, inputs, calibration=f"{len(inputs)} training images of {data.name}")
            int8_scores = score(Predictor.from_onnx(int8, tta=tta), folders, args.limit)
            costs = {f: (chosen[f]["iou"] - int8_scores[f]["iou"]) if "iou" in chosen[f]
                     else (int8_scores[f]["fp_share"] - chosen[f]["fp_share"]) for f in chosen}
            worst_folder = max(costs, key=costs.get)
            keep = costs[worst_folder] < args.int8_cost
            print("3. int8 (static QDQ) against fp32, same TTA:\n"
                  + table({"fp32": chosen, "int8": int8_scores})
                  + f"\n   worst cost {costs[worst_folder]:+.4f} ({worst_folder}): "
                  f"{'int8 ships' if keep else 'fp32 ships'} (rule: cost < {args.int8_cost} on every folder)")
            int8_note = (f"kept: worst cost {costs[worst_folder]:+.4f} on {worst_folder}" if keep else
                         f"rejected: cost {costs[worst_folder]:+.4f} on {worst_folder} >= {args.int8_cost}")
            if keep:
                ship, precision = int8, "int8"

        import onnx

        proto = onnx.load(str(ship))
        props = {p.key: p.value for p in proto.metadata_props}
        props.update({
            "tta": "1" if tta else "0",
            "tta_measured": json.dumps(tta_measured, sort_keys=True),
            "int8_decision": int8_note,
            "precision": precision,
            "source": pt.name,
            "source_sha256": file_sha256(pt),
            "card": json.dumps(meta.get("card", {}), sort_keys=True),
        })
        set_metadata(proto, props)
        staged = tmp / "ship.onnx"
        onnx.save(proto, str(staged))
        check = Predictor.from_onnx(staged)
        assert check.tta == tta and check.info["precision"] == precision
        os.replace(staged, out)
    print(f"4. wrote {out.relative_to(REPO)} ({precision}, TTA {'on' if tta else 'off'}, "
          f"{out.stat().st_size / 2**20:.1f} MiB) from {pt.name} sha256 {props['source_sha256'][:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
