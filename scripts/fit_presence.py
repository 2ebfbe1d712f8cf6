"""Fit a PresenceHead ("is anyone in the picture?") on a trained person model's frozen encoder, and choose
its cut on the validation split (issue 18: photos with nobody in them).

    python scripts/fit_presence.py personseg/weights/accurate.pt --out runs/accurate_presence.pt

1. Features: `PresenceHead.pooled` of the model's encoder on every training-split image of the mask folders
   (portraits, ccp, hsd, coco, pennfudan: someone is there) and of the person-free ones (negatives,
   composites/backgrounds: nobody), each image at the model's own input size, as inference sees it.
2. The head: a logistic regression on those features (standardised; classes weighted to count equally;
   L2 penalty --l2), fitted with L-BFGS, the standardisation folded into its weights.
3. The cut: the full predictor (guided filter, the model's threshold) runs once on the VALIDATION images of
   every folder (the held-back split is never looked at), keeping each photo's confusion counts and its
   presence probability. A cut zeroes the mask of every photo under it; the chosen cut is the one with the
   fewest pixels called person on negatives/ among those that cost no mask folder more than --max-cost
   pooled IoU. A photo with a person under the cut loses its whole mask, so the allowance is kept small.
Writes --out (the model with the head; meta["presence_threshold"], meta["presence_fit"] with the figures)
and prints the table of cuts. Ship it as any checkpoint: scripts/ship_model.py, then scripts/ship_onnx.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from personseg.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from personseg.evaluate import IGNORE, list_items  # noqa: E402
from personseg.folders import list_images, split_items  # noqa: E402
from personseg.imageio import read_image  # noqa: E402
from personseg.models.blocks import pad_to_multiple  # noqa: E402
from personseg.models.unet_mobilenet import PresenceHead, with_presence_head  # noqa: E402
from personseg.predict import PRESENCE_KEY, InputSpec, Predictor, sigmoid  # noqa: E402

PERSON_FOLDERS = ("portraits", "ccp", "hsd", "coco", "pennfudan")
EMPTY_FOLDERS = ("negatives/images", "composites/backgrounds")
CUTS = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


def with_head(checkpoint: Path) -> tuple[torch.nn.Module, dict]:
    """The checkpoint's model with a fresh PresenceHead (every other weight loaded)."""
    try:
        model, info = with_presence_head(*load_checkpoint(checkpoint))
    except ValueError as e:
        raise SystemExit(f"error: {checkpoint}: {e}") from None
    return model.float().eval(), info


def pooled(model, spec: InputSpec, path: Path) -> np.ndarray:
    x = torch.from_numpy(spec.preprocess([read_image(path)]))
    with torch.inference_mode():
        return PresenceHead.pooled(model.features(pad_to_multiple(x, model.stride)[0]))[0].numpy()


def training_features(model, spec: InputSpec, data: Path) -> tuple[np.ndarray, np.ndarray]:
    paths = [(p, 1.0) for f in PERSON_FOLDERS for p, _ in list_items(data / f, "train")]
    paths += [(p, 0.0) for f in EMPTY_FOLDERS for p in split_items(list_images(data / f), "train")]
    features = [pooled(model, spec, p) for p, _ in tqdm(paths, desc="features (train split)", unit="img")]
    return np.stack(features), np.array([y for _, y in paths], np.float32)


def fit(x: np.ndarray, y: np.ndarray, l2: float, weight: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Logistic regression with L2 on the standardised weights -> (w, b) on raw x. Each sample's loss is
    weighted by `weight` (scaled to mean 1); by default the two classes count equally."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    z, t = torch.from_numpy((x - mean) / std).double(), torch.from_numpy(y).double()
    if weight is None:
        weight = torch.where(t > 0, 0.5 / t.mean(), 0.5 / (1 - t.mean()))
    else:
        weight = torch.as_tensor(weight, dtype=torch.float64)
        weight = weight / weight.mean()
    w, b = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True), torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, t, weight=weight)
                + l2 * (w ** 2).sum() / len(t))
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = w.detach().numpy() / std
    return w_raw, float(b.detach().numpy()[0] - (w_raw * mean).sum())


def validation_rows(predictor, folders: list[str], data: Path) -> list[dict]:
    """Per validation photo: folder, confusion counts at the model's threshold (the predictor's cut is 0, so
    no mask is emptied), presence probability (read off the same forward pass by a hook on the head)."""
    logits = []
    hook = predictor.model.presence.register_forward_hook(lambda module, inputs, out: logits.append(float(out[0, 0])))
    rows = []
    for folder in folders:
        for path, truth_of in tqdm(list_items(data / folder, "val"), desc=f"{folder} (val)", unit="img"):
            rgb = read_image(path)
            mask = truth_of(rgb.shape[:2])[0]
            truth, valid = mask > IGNORE, mask != IGNORE
            pred = (predictor.predict(rgb) >= predictor.threshold) & valid
            rows.append({"folder": folder, "tp": int((pred & truth).sum()), "fp": int((pred & ~truth).sum()),
                         "fn": int((~pred & truth).sum()), "valid": int(valid.sum()),
                         "p": float(sigmoid(np.float32(logits[-1])))})
    hook.remove()
    return rows


def gated(rows: list[dict], cut: float) -> dict:
    """Per folder: pooled IoU, or for person-free folders the mean over photos of the share called person
    (the card pools the folder's pixels instead: the two differ by a few tenths of a point) and photos over 5%."""
    out = {}
    for folder in dict.fromkeys(r["folder"] for r in rows):
        mine = [r for r in rows if r["folder"] == folder]
        kept = [r["p"] >= cut for r in mine]
        tp = sum(r["tp"] * k for r, k in zip(mine, kept))
        fp = sum(r["fp"] * k for r, k in zip(mine, kept))
        fn = sum(r["fn"] + r["tp"] * (not k) for r, k in zip(mine, kept))
        if tp + fn == 0:
            shares = [r["fp"] * k / r["valid"] for r, k in zip(mine, kept)]
            out[folder] = {"fp_share": float(np.mean(shares)), "over_5pct": int(sum(s > 0.05 for s in shares))}
        else:
            out[folder] = {"iou": tp / (tp + fp + fn)}
    return out


def choose_cut(rows: list[dict], max_cost: float) -> tuple[float, dict]:
    base = gated(rows, 0.0)
    table = {cut: gated(rows, cut) for cut in CUTS}
    fair = [cut for cut, g in table.items()
            if all(base[f]["iou"] - g[f]["iou"] <= max_cost for f in g if "iou" in g[f])]
    best = min(fair, key=lambda cut: (table[cut]["negatives"]["fp_share"], cut), default=0.0)
    return best, {"none": base, **{str(c): g for c, g in table.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--l2", type=float, default=1.0, help="L2 penalty on the standardised weights")
    parser.add_argument("--max-cost", type=float, default=0.002,
                        help="most pooled validation IoU a mask folder may lose to the cut")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists: name a new file")
    torch.set_num_threads(args.threads)
    model, info = with_head(args.checkpoint)
    spec = InputSpec.from_info(info)
    x, y = training_features(model, spec, args.data)
    w, b = fit(x, y, args.l2)
    with torch.no_grad():
        model.presence.linear.weight.copy_(torch.from_numpy(w)[None])
        model.presence.linear.bias.fill_(b)
    train_accuracy = float((((x @ w + b) > 0) == (y > 0)).mean())
    predictor = Predictor(model, spec=spec, threshold=info["threshold"], info=info)
    predictor.presence_threshold = 0  # a refit of a model that has a head: score every mask ungated
    rows = validation_rows(predictor, [*PERSON_FOLDERS, "negatives"], args.data)
    cut, table = choose_cut(rows, args.max_cost)
    for name, g in table.items():
        print(f"cut {name:>5}: " + "  ".join(
            f"{f} {m['fp_share']:.2%}/{m['over_5pct']}" if "fp_share" in m else f"{f} {m['iou']:.4f}" for f, m in g.items()))
    print(f"chosen cut {cut} (fewest person pixels on negatives/ with no mask folder losing over {args.max_cost}); "
          f"training accuracy {train_accuracy:.3f} on {len(y)} photos ({int((y == 0).sum())} person-free)")
    meta = {**info["meta"], PRESENCE_KEY: cut, "presence_fit": {
        "source": str(args.checkpoint), "l2": args.l2, "max_cost": args.max_cost, "train_photos": len(y),
        "train_person_free": int((y == 0).sum()), "train_accuracy": train_accuracy, "val_cuts": table}}
    save_checkpoint(args.out, model, meta=meta, half=True, **{k: info[k] for k in (
        "arch", "model_kwargs", "input_size", "mean", "std", "threshold")})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
