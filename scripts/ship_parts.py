"""Ship the multi-task `parts` model: the shipped `accurate` with trained part and landmark heads.

    python scripts/ship_parts.py runs/parts/best.pt --figures training_logs/parts/figures.json

The heads were trained with `accurate`'s trunk frozen (configs/parts.yaml), so the person mask is
`accurate`'s: this script checks that every trunk tensor equals accurate.pt's, takes accurate's
threshold, TTA setting, presence head and cut (scripts/fit_presence.py) and mask card (they describe the
same mask), adds the heads' figures
(benchmarks/parts_landmarks.py --json) as card["heads"], and writes personseg/weights/parts.pt (fp16, as
the other shipped models) and parts.onnx (fp32, every head; the ONNX parity check covers the three
outputs), then checks that parts.onnx and accurate.onnx give the same alpha on real photos.

When `accurate` is shipped anew, the heads move onto its trunk and train on (configs/parts6.yaml):

    python scripts/ship_parts.py --graft personseg/weights/parts.pt --out runs/parts6_init.pt

writes a checkpoint of the multi-task model whose trunk tensors (every tensor accurate.pt has) are
accurate.pt's and whose heads are the given checkpoint's, for `model.init`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from personseg.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint  # noqa: E402
from personseg.export import export_onnx, set_metadata  # noqa: E402
from personseg.imageio import read_image  # noqa: E402
from personseg.models.unet_mobilenet import with_presence_head  # noqa: E402
from personseg.predict import PRESENCE_KEY, WEIGHTS_DIR, Predictor, file_sha256  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="the multi-task run's best.pt")
    parser.add_argument("--graft", type=Path, help="a multi-task checkpoint whose heads go onto accurate.pt's trunk")
    parser.add_argument("--out", type=Path, help="with --graft: where the grafted checkpoint goes")
    parser.add_argument("--figures", type=Path, help="benchmarks/parts_landmarks.py --json output, for the card")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("PERSONSEG_DATA", "../shared/data")))
    args = parser.parse_args()
    if args.graft:
        if not args.out or args.checkpoint:
            parser.error("--graft takes --out and no checkpoint")
        return graft(args.graft, args.out)
    if not args.checkpoint:
        parser.error("give the multi-task run's checkpoint (or --graft)")
    model, info = load_checkpoint(args.checkpoint)
    accurate, accurate_info = load_checkpoint(WEIGHTS_DIR / "accurate.pt")
    trunk = accurate.state_dict()
    meta = read_checkpoint(WEIGHTS_DIR / "accurate.pt")["meta"]
    if accurate.presence is not None:  # accurate's PresenceHead (fitted after the heads' training) comes along
        model, info = with_presence_head(model, info, accurate.presence)
    mine = model.state_dict()
    differ = [k for k, v in trunk.items() if not torch.equal(mine[k].float(), v.float())]
    if differ:
        raise SystemExit(f"{args.checkpoint}: {len(differ)} trunk tensors differ from accurate.pt ({differ[:3]}); "
                         "train the heads with the trunk frozen (configs/parts.yaml)")
    card = dict(meta.get("card", {}))
    if args.figures:
        card["heads"] = json.loads(args.figures.read_text())
    pt, onnx_path = WEIGHTS_DIR / "parts.pt", WEIGHTS_DIR / "parts.onnx"
    save_checkpoint(pt, model, arch=info["arch"], model_kwargs=info["model_kwargs"],
                    input_size=tuple(accurate_info["input_size"]), threshold=accurate_info["threshold"],
                    meta={"card": card, "tta": meta.get("tta", False), "heads_from": str(args.checkpoint),
                          "config": read_checkpoint(args.checkpoint)["meta"].get("config"),
                          **{k: meta[k] for k in [PRESENCE_KEY] if k in meta}}, half=True)
    shipped, shipped_info = load_checkpoint(pt)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "parts.onnx"
        export_onnx(shipped, shipped_info, staged)
        import onnx

        proto = onnx.load(str(staged))
        props = {p.key: p.value for p in proto.metadata_props}
        props.update({"tta": "1" if meta.get("tta") else "0", "precision": "fp32", "source": pt.name,
                      "source_sha256": file_sha256(pt), "card": json.dumps(card, sort_keys=True)})
        set_metadata(proto, props)
        onnx.save(proto, str(staged))
        os.replace(staged, onnx_path)
    parts, base = Predictor.from_onnx(onnx_path), Predictor.from_onnx(WEIGHTS_DIR / "accurate.onnx")
    photos = sorted((args.data / "hsd" / "images").glob("*.jpg"))[:3] + sorted((args.data / "ccp" / "images").glob("*.jpg"))[:3]
    worst = max(float(np.abs(parts.predict(read_image(p)) - base.predict(read_image(p))).max()) for p in photos)
    print(f"wrote {pt.relative_to(REPO)} and {onnx_path.relative_to(REPO)} ({onnx_path.stat().st_size / 2**20:.1f} MiB); "
          f"alpha vs accurate.onnx on {len(photos)} photos: max abs difference {worst:.2e}")
    return 0


def graft(heads_path: Path, out: Path) -> int:
    """Write `heads_path`'s model with accurate.pt's trunk: the starting point for training the heads on anew."""
    if out.exists():
        raise SystemExit(f"{out}: already exists; pass another --out (nothing is overwritten)")
    model, info = load_checkpoint(heads_path)
    state = model.state_dict()
    # accurate's presence head comes along where the heads' model has one (training leaves it behind,
    # train.load_init; shipping adds it back, `with_presence_head`)
    trunk = {k: v for k, v in read_checkpoint(WEIGHTS_DIR / "accurate.pt")["state_dict"].items()
             if k in state or not k.startswith("presence.")}
    wrong = [k for k, v in trunk.items() if k not in state or state[k].shape != v.shape]
    if wrong:
        raise SystemExit(f"{heads_path}: not accurate.pt's architecture plus heads ({wrong[:3]} do not fit)")
    model.load_state_dict({**state, **trunk})  # load_state_dict casts the fp16 trunk to the model's dtype
    save_checkpoint(out, model, arch=info["arch"], model_kwargs=info["model_kwargs"],
                    input_size=tuple(info["input_size"]), threshold=info["threshold"],
                    meta={"heads_from": str(heads_path), "trunk_from": "accurate.pt"})
    print(f"wrote {out}: {len(trunk)} trunk tensors from accurate.pt, {len(state) - len(trunk)} from {heads_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
