"""Train the deep guided filter on top of a frozen shipped model and ship its coefficient net as ONNX.

    python scripts/train_refiner.py --data ../shared/data --minutes 35 --out training_logs/refiner
    python scripts/train_refiner.py --data ../shared/data --export-only training_logs/refiner/best.pt

Writes OUT/log.jsonl (validation matting errors of the refiner, with the analytic filter's beside them),
OUT/best.pt and personseg/weights/MODEL_refiner.onnx (or --onnx), which `personseg.load(MODEL)` then uses.
One torch thread and one ONNX Runtime thread: it is meant to run in the background (nice -n 19).
"""
import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from personseg.guided_filter_torch import DeepGuidedFilterRefiner  # noqa: E402
from personseg.predict import WEIGHTS_DIR, load  # noqa: E402
from personseg.refiner_train import SIDE_WEIGHT, SOFT_SHARE, SQUARED_WEIGHT, export_refiner, train  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--model", default="accurate", help="shipped model whose output is refined")
    parser.add_argument("--minutes", type=float, default=35.0)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--scale", type=int, choices=(1, 2), default=1,
                        help="2: the net runs on 2x2-averaged inputs, a quarter of the pixels (refiner9)")
    parser.add_argument("--squash", choices=("asinh", "log1p"), default="asinh",
                        help="how the coefficients enter the net (log1p: one op fewer)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side-weight", type=float, default=SIDE_WEIGHT,
                        help="weight of a hinge at the model's threshold in binary masks' edge band "
                             "(default 0, refiner4's loss; refiner5-8 tried 1 and 2)")
    parser.add_argument("--squared-weight", type=float, default=SQUARED_WEIGHT,
                        help="weight of the squared error beside the L1 (refiner4: 1)")
    parser.add_argument("--soft-share", type=float, default=SOFT_SHARE,
                        help="share of soft-alpha composites in the training pool, the rest real photos with masks")
    parser.add_argument("--out", default="training_logs/refiner")
    parser.add_argument("--export-only", metavar="BEST_PT", help="only export this best.pt to ONNX")
    parser.add_argument("--onnx", type=Path, help="where the ONNX refiner goes (default: "
                        "personseg/weights/MODEL_refiner.onnx, the one the model loads)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model_file = WEIGHTS_DIR / f"{args.model}.onnx"
    if not model_file.is_file():
        print(f"error: {model_file} does not exist; the refiner trains on a shipped ONNX model "
              "(python scripts/ship_onnx.py NAME)", file=sys.stderr)
        return 2
    if args.export_only:
        saved = torch.load(args.export_only, weights_only=True)
        best = saved["val"]
    else:
        predictor = load(args.model, refine=False, threads=1, spinning=False)
        best = train(predictor, args.data, args.out, args.minutes, args.seed, args.hidden,
                     side_weight=args.side_weight, squared_weight=args.squared_weight,
                     soft_share=args.soft_share, scale=args.scale, squash=args.squash)
        print(json.dumps(best))
        saved = torch.load(Path(args.out) / "best.pt", weights_only=True)
    refiner = DeepGuidedFilterRefiner(**saved["kwargs"])
    refiner.load_state_dict(saved["state_dict"])
    path = export_refiner(refiner, args.onnx or WEIGHTS_DIR / f"{args.model}_refiner.onnx", model_file, best)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
