"""The model card's pictures: shipped models on the public-domain photos inside scikit-image.

    python scripts/model_card_pictures.py --out docs/model_card.jpg

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
    parser.add_argument("--out", type=Path, default=Path("docs/model_card.jpg"))
    args = parser.parse_args()
    models = {name: personseg.load(name) for name in ("accurate", "fast")}
    rows = []
    for photo in PHOTOS:
        rgb = getattr(data, photo)()
        rgb = np.stack([rgb] * 3, -1) if rgb.ndim == 2 else rgb[..., :3]
        tiles = [(rgb, photo)]
        for name, model in models.items():
            alpha = model.predict(rgb)
            share = float((alpha >= model.threshold).mean())
            tiles.append((cutout(rgb, alpha), f"{name}: {share:.0%} person"))
        size = (round(rgb.shape[1] * ROW_HEIGHT / rgb.shape[0]), ROW_HEIGHT)
        rows.append(np.concatenate([label(cv2.resize(t, size, interpolation=cv2.INTER_AREA), text)
                                    for t, text in tiles], 1))
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                            for r in rows])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]})")


if __name__ == "__main__":
    main()
