"""Average the weights of checkpoints of one training lineage (a "model soup": Wortsman et al., "Model soups:
averaging weights of multiple fine-tuned models improves accuracy without increasing inference time", ICML
2022; here two stages of one run, as in stochastic weight averaging) into one checkpoint.

    python scripts/soup.py runs/accurate_wild3/best.pt runs/accurate_wild4/best.pt --out runs/soup34.pt

Float tensors (BatchNorm's running statistics included) are averaged with the given --weights (equal by
default); integer ones (BatchNorm's batch counter) come from the first file. All files must hold the same
architecture and tensor shapes. The result keeps the first file's description and metadata, plus meta
["soup"] naming its ingredients. Score it like any checkpoint (scripts/ship_model.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from personseg.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint  # noqa: E402


def soup(paths: list[str], weights: list[float]) -> dict:
    """The averaged state dict of the checkpoints at `paths` (weights normalised to sum to 1)."""
    ckpts = [read_checkpoint(p) for p in paths]
    first = ckpts[0]
    for path, c in zip(paths[1:], ckpts[1:]):
        if c["arch"] != first["arch"] or c["state_dict"].keys() != first["state_dict"].keys():
            raise SystemExit(f"error: {path} is not the architecture of {paths[0]}: a soup needs one model's checkpoints")
    total = sum(weights)
    out = {}
    for k, v in first["state_dict"].items():
        if v.is_floating_point():
            out[k] = sum(w / total * c["state_dict"][k].float() for w, c in zip(weights, ckpts))
        else:
            out[k] = v
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--weights", type=float, nargs="+", help="one per checkpoint (default: equal)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    weights = args.weights or [1.0] * len(args.checkpoints)
    if len(weights) != len(args.checkpoints):
        parser.error("--weights needs one number per checkpoint")
    out = Path(args.out)
    if out.exists():
        parser.error(f"{out} exists: name a new file")
    state = soup(args.checkpoints, weights)
    model, info = load_checkpoint(args.checkpoints[0])
    model.load_state_dict(state)
    meta = {**info["meta"], "soup": {"checkpoints": args.checkpoints, "weights": weights}}
    save_checkpoint(out, model, meta=meta, **{k: info[k] for k in (
        "arch", "model_kwargs", "input_size", "mean", "std", "threshold")})
    print(f"wrote {out}: {len(state)} tensors averaged from {len(args.checkpoints)} checkpoints")
    return 0


if __name__ == "__main__":
    sys.exit(main())
