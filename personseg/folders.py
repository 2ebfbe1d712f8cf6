"""The data-folder contract: which files a folder holds, what a mask's values mean, which split a file
is in. Training (`personseg.data`), `personseg eval`, `personseg data check` and the int8 calibration
of `personseg export` all ask here, so they see the same files the same way. Torch-free: `data check`
runs in the light install.

A data folder holds `images/` and `masks/<image stem>.png`. A mask is 8-bit gray: 0 background,
255 person, 128 don't-care (counts neither way in training or evaluation; COCO crowd regions). Other
values are read as person above 128 and background below (`data check` reports them as errors).

Splits (fixed): the (image, mask) pairs of a folder are sorted by name; index % 10 == 9 is validation,
index % 10 == 4 is held back (no training, checkpoint, threshold or recipe choice looks at it: the
model card's final figures), every other index trains (`val_every` changes the 10). A `split.csv`
(name,split) beside images/ removes the files it marks other than `train` from the training split.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from personseg.imageio import IMAGE_EXTENSIONS

IGNORE = 128
ASPECT_TOLERANCE = 0.02  # a mask of another size is resized to its image within this relative aspect error
                         # (hsd's resized masks are off by under 1%); beyond it the pair is an error
VAL_EVERY = 10
SPLITS = ("train", "val", "holdout")


def list_images(folder: str | Path) -> list[Path]:
    """Image files of `folder` sorted by name (hidden files such as .DS_Store skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; check data.root / $PERSONSEG_DATA and the source path")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def decode_mask(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) uint8 mask file values -> (mask, valid), both (H, W) uint8 in {0, 1}: mask 1 = person,
    valid 0 = don't-care (value 128, never person)."""
    valid = gray != IGNORE
    return ((gray > IGNORE) & valid).astype(np.uint8), valid.astype(np.uint8)


def same_aspect(image_size: tuple[int, int], mask_size: tuple[int, int]) -> bool:
    """Whether a mask of `mask_size` may be resized onto an image of `image_size` (both (H, W))."""
    (ih, iw), (mh, mw) = image_size, mask_size
    return abs((mw / mh) / (iw / ih) - 1) <= ASPECT_TOLERANCE


def split_of(index: int, val_every: int = VAL_EVERY) -> str:
    """The split of the index-th file of a sorted folder: "val", "holdout" or "train" (module doc)."""
    if index % val_every == val_every - 1:
        return "val"
    return "holdout" if val_every > 5 and index % val_every == 4 else "train"


def split_items(items: list, split: str, val_every: int = VAL_EVERY) -> list:
    """The split rule (`split_of`) on an already sorted list (images, COCO ids, cut-outs)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: use one of {', '.join(SPLITS)}")
    return [x for i, x in enumerate(items) if split_of(i, val_every) == split]


def list_pairs(folder: str | Path, split: str | None = None, val_every: int = VAL_EVERY,
               mask_dir: str = "masks") -> tuple[list[tuple[Path, Path]], list[Path]]:
    """The (image, mask) pairs of a data folder in `split` (None: every pair), matched by stem in name
    order, and the images that have no mask. The split rule counts pairs; split.csv applies to "train"."""
    folder = Path(folder)
    masks = {p.stem: p for p in list_images(folder / mask_dir)}
    images = list_images(folder / "images")
    pairs = [(p, masks[p.stem]) for p in images if p.stem in masks]
    unpaired = [p for p in images if p.stem not in masks]
    if split is None:
        return pairs, unpaired
    pairs = split_items(pairs, split, val_every)
    marked = read_split_csv(folder)
    if split == "train" and marked:
        pairs = [pair for pair in pairs if marked.get(pair[0].stem, "train") == "train"]
    return pairs, unpaired


def read_split_csv(folder: Path) -> dict[str, str]:
    """{image stem: split} from `folder/split.csv` (columns name,split); {} when there is none."""
    path = Path(folder) / "split.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["name"]: row["split"] for row in csv.DictReader(f)}
