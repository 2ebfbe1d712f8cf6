"""The model card's pictures: shipped models on the public-domain photos inside scikit-image.

    python scripts/model_card_pictures.py --out docs/model_card.png

One row per photo: the photo | `accurate`'s cut-out on a checkerboard | `fast`'s, with the share of the
frame each calls person. Photos: astronaut and camera (people), chelsea (a cat), coffee and rocket (no
one): the last three show what the models do where there is no person. scikit-image's own photos are
used because the training and validation data may not be copied into the repository.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from skimage import data

import personseg

PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket")
ROW_HEIGHT = 200


def checkerboard(h: int, w: int, cell: int = 10) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.where(((yy // cell + xx // cell) % 2)[..., None] == 0, 205, 255).astype(np.float32).repeat(3, 2)


def cutout(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return (a * rgb + (1 - a) * checkerboard(*rgb.shape[:2])).round().astype(np.uint8)


def label(image: np.ndarray, text: str) -> np.ndarray:
    image = image.copy()
    cv2.putText(image, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/model_card.png"))
    args = parser.parse_args()
    models = {name: personseg.load(name) for name in ("accurate", "fast")}
    rows = []
    for photo in PHOTOS:
        rgb = getattr(data, photo)()
        rgb = np.stack([rgb] * 3, -1) if rgb.ndim == 2 else rgb[..., :3]
        tiles = [label(rgb, photo)]
        for name, model in models.items():
            alpha = model.predict(rgb)
            share = float((alpha >= model.threshold).mean())
            tiles.append(label(cutout(rgb, alpha), f"{name}: {share:.0%} person"))
        row = np.concatenate(tiles, 1)
        rows.append(cv2.resize(row, (round(row.shape[1] * ROW_HEIGHT / row.shape[0]), ROW_HEIGHT),
                               interpolation=cv2.INTER_AREA))
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                            for r in rows])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]})")


if __name__ == "__main__":
    main()
