"""Datasets: every source turns into the same sample dict, ready for the training loop.

    sample = dataset[i]  # or dataset[(i, seed, tall)]: the sampler's way to vary augmentation per epoch
    sample["image"]   (3, H, W) float, normalised with the ImageNet mean/std
    sample["mask"]    (1, H, W) float, 1 = person
    sample["valid"]   (1, H, W) float, 0 = ignored (padding, COCO crowd regions)
    sample["sdm"]     (1, H, W) float signed distance map, only when `with_sdm` (boundary loss is on)
    sample["name"], sample["source"]  str

Splits and mask values: `personseg.folders`, the data-folder contract (every 10th file is validation,
index % 10 == 4 held back, mask 128 = don't-care). Composites apply the split rule to the cut-outs and
to the backgrounds; COCO applies it to the images sorted by file name.

Orientation: training batches come out at `input_size` (W, H) or, for a share of batches
(`data.tall_share`), transposed to (H, W): portraits and full-body photos are taller than wide, and
the predictor feeds them to the model in their own orientation, so the model must see tall people at
that scale in training. Validation (no augmentation) then letterboxes each picture in the orientation
of its own shape (`orient_val=True`, batch 1).

Augmentation is seeded per sample (from the dataset seed and the index, or the seed the sampler
hands over), so a sample is the same whatever worker or rank draws it, and a resumed run sees the
same data as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import io
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, Sampler

from personseg.augment import apply_augment, build_augment, letterbox, letterbox_window, window_keypoints
from personseg.checkpoint import IMAGENET_MEAN, IMAGENET_STD
from personseg.config import SourceConfig, TrainConfig, data_root
from personseg.folders import (VAL_EVERY, decode_mask, list_images, list_pairs, same_aspect,  # noqa: F401
                               split_items)
from personseg.keypoints import (COCO_KEYPOINTS, FLIP, PAD_COLOR, STRIDE as KP_STRIDE, crop, crop_window,
                                 render_heatmaps)
from personseg.losses import signed_distance_map
from personseg.parts import IGNORE as IGNORE_PART, ccp_parts

def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; grayscale files are expanded to three channels."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:  # a format OpenCV does not read (GIF): the package's reader, with EXIF orientation
        from personseg.imageio import read_image
        return read_image(path)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_gray(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f"{path}: cannot decode image")
    return img if img.ndim == 2 else img[..., 0]


def read_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The RGB image and its one-channel mask (or label map), resized to the image (nearest) if needed."""
    image, gray = read_rgb(image_path), read_gray(mask_path)
    if gray.shape != image.shape[:2]:
        gray = cv2.resize(gray, image.shape[1::-1], interpolation=cv2.INTER_NEAREST_EXACT)
    return image, gray


_mask_size_reports: dict[str, int] = {}
_screened: dict[str, list[tuple[Path, Path]]] = {}


def screen_pairs(mask_dir: Path, pairs: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """The pairs a loader can use, from the headers alone (once per folder): a pair whose image or mask
    cannot be read, or whose mask has another aspect ratio than its image (`personseg data check`
    calls that an error: resizing would stretch it), is skipped and named in a warning. Masks of the
    same aspect ratio but another size are kept (resized when loaded) and counted in one warning."""
    key = str(mask_dir)
    if key not in _mask_size_reports or key not in _screened:
        kept, resized, skipped = [], 0, []
        for img, mask in pairs:
            try:
                with Image.open(img) as a, Image.open(mask) as b:
                    (iw, ih), (mw, mh) = a.size, b.size
            except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
                skipped.append(f"{img.name}/{mask.name} (unreadable: {str(e).splitlines()[0] if str(e) else type(e).__name__})")
                continue
            if not same_aspect((ih, iw), (mh, mw)):
                skipped.append(f"{mask.name} (mask {mw}x{mh}, image {iw}x{ih}: another aspect ratio)")
                continue
            resized += (iw, ih) != (mw, mh)
            kept.append((img, mask))
        _screened[key], _mask_size_reports[key] = kept, resized
        if skipped:
            shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
            warnings.warn(f"{mask_dir.parent}: skipping {len(skipped)} of {len(pairs)} pairs: {shown}; "
                          f"run `personseg data check {mask_dir.parent}` for the full list", stacklevel=2)
        if resized:
            warnings.warn(f"{mask_dir}: {resized} of {len(pairs)} masks are not the size of their image; "
                          "resizing them to the image (nearest neighbour)", stacklevel=2)
    usable = set(_screened[key])
    return [pair for pair in pairs if pair in usable]


def readable(paths: list[Path], where: str) -> list[Path]:
    """The files of `paths` whose image header opens, the others named in one warning: one corrupt
    photo skips itself instead of stopping a training hours in. Each file's header is read once."""
    fresh = [p for p in paths if p not in _opens]
    for path in fresh:
        try:
            with Image.open(path):
                _opens[path] = True
        except (OSError, SyntaxError, ValueError):
            _opens[path] = False
    bad = [p for p in fresh if not _opens[p]]
    if bad:
        shown = ", ".join(p.name for p in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        warnings.warn(f"{where}: skipping {len(bad)} unreadable image{'s' if len(bad) != 1 else ''}: {shown}",
                      stacklevel=2)
    return [p for p in paths if _opens[p]]


_opens: dict[Path, bool] = {}  # image path -> whether its header opens (readable's memory)


def report_mask_sizes(mask_dir: Path, pairs: list[tuple[Path, Path]]) -> int:
    """Count masks whose size differs from their image (same aspect ratio; headers only), warning once per folder."""
    screen_pairs(mask_dir, pairs)
    return _mask_size_reports[str(mask_dir)]


class SegDataset(Dataset):
    """Base class: subclasses list their samples and implement `load(i, seed) -> dict` with uint8
    arrays image (H, W, 3), mask (H, W) in {0, 1}, optionally valid / labels / alpha / kp_ignore (H, W),
    keypoints (P, 17, 3) float (x, y, visibility) and name. This class augments (or letterboxes) them to
    `size` = (W, H) and makes the tensors. With `heads` (a multi-task model trains) every sample also
    holds the targets of the part and keypoint heads (`head_targets`), empty where the source has none."""

    def __init__(self, source: str, size: tuple[int, int], augment: str = "none", seed: int = 0,
                 with_sdm: bool = False, orient_val: bool = False, heads: bool = False):
        self.source, self.size, self.seed, self.with_sdm = source, tuple(size), seed, with_sdm
        self.augment, self.orient_val, self.heads = augment, orient_val, heads
        self.pipelines = {}  # tall -> Albumentations pipeline, built on first use

    def pipeline(self, tall: bool):
        if tall not in self.pipelines:
            self.pipelines[tall] = build_augment(self.augment, self.size[::-1] if tall else self.size)
        return self.pipelines[tall]

    def load(self, i: int, seed: int) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: int | tuple) -> dict[str, Any]:
        """`key` = i, or (i, seed) / (i, seed, tall) from a sampler: tall = output size transposed."""
        i, seed, tall = (key + (False,))[:3] if isinstance(key, tuple) else (key, self.seed * 1_000_003 + key, False)
        raw = self.load(i, seed)
        mask = raw["mask"]
        extra = {k: raw[k] for k in ("labels", "alpha", "kp_ignore") if k in raw}
        masks = [raw.get("valid", np.ones_like(mask))] + list(extra.values())
        people = raw.get("keypoints")
        xy, flipped = (None if people is None else people[..., :2].reshape(-1, 2)), False
        if self.augment != "none":
            out = apply_augment(self.pipeline(tall), raw["image"], mask, masks, seed, xy)
            image, mask, masks = out["image"], out["mask"], out["masks"]
            xy, flipped = out.get("keypoints"), out.get("flipped", False)
        else:
            tall = tall or (self.orient_val and mask.shape[0] > mask.shape[1])
            size = self.size[::-1] if tall else self.size
            if xy is not None:
                xy = window_keypoints(xy, letterbox_window(raw["image"].shape[:2], size))
            image, mask, masks = letterbox(raw["image"], mask, masks, size)
        sample = {"image": normalize(image), "mask": torch.from_numpy(mask[None].astype(np.float32)),
                  "valid": torch.from_numpy(masks[0][None].astype(np.float32))}
        extra = dict(zip(extra, masks[1:]))
        if "labels" in extra:
            sample["labels"] = torch.from_numpy(extra["labels"].astype(np.int64))
        if "alpha" in extra:
            sample["alpha"] = torch.from_numpy(extra["alpha"][None].astype(np.float32) / 255)
        if self.heads:
            if people is not None:
                people = np.concatenate([xy.reshape(people.shape[:2] + (2,)), people[..., 2:]], -1)
                people = people[:, list(FLIP)] if flipped else people  # a mirrored left wrist is a right one
            sample.update(head_targets(mask, masks[0], extra.get("labels"), people, extra.get("kp_ignore")))
        if self.with_sdm:
            sample["sdm"] = torch.from_numpy(signed_distance_map(mask))[None]
        sample["name"], sample["source"] = raw["name"], self.source
        return sample


def head_targets(mask: np.ndarray, valid: np.ndarray, labels: np.ndarray | None, people: np.ndarray | None,
                 kp_ignore: np.ndarray | None) -> dict[str, torch.Tensor]:
    """The multi-task heads' targets of one augmented sample:
    labels (H, W) long part classes, IGNORE_PART where unknown (no part labels, padding);
    heatmaps (17, h, w) float keypoint Gaussians (personseg.keypoints) and heatmap_weight (1, h, w):
    where the heatmaps count. A source with keypoints counts everywhere but on its people without
    keypoint labels and crowds (`kp_ignore`, as OpenPose masks them); a person-free picture counts
    everywhere (no joint anywhere); any other picture has people with unknown joints and counts nowhere."""
    h, w = mask.shape
    parts = np.full((h, w), IGNORE_PART, np.int64) if labels is None else labels.astype(np.int64)
    parts[valid == 0] = IGNORE_PART
    hh, hw = -(-h // KP_STRIDE), -(-w // KP_STRIDE)
    if people is not None:
        heatmaps = render_heatmaps(people, (h, w))
        ignore = cv2.resize(cv2.dilate(kp_ignore, np.ones((KP_STRIDE, KP_STRIDE), np.uint8)), (hw, hh),
                            interpolation=cv2.INTER_NEAREST_EXACT)
        weight = (1 - ignore).astype(np.float32)
    else:
        heatmaps = np.zeros((len(COCO_KEYPOINTS), hh, hw), np.float32)
        weight = np.full((hh, hw), float(mask.max() == 0), np.float32)
    return {"labels": torch.from_numpy(parts), "heatmaps": torch.from_numpy(heatmaps),
            "heatmap_weight": torch.from_numpy(weight)[None]}


def normalize(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float, ImageNet-normalised."""
    # numpy, not torch: tiny torch ops in data-loader workers pay thread start-up costs
    scale = np.float32(1 / 255) / np.array(IMAGENET_STD, np.float32)
    shift = np.array(IMAGENET_MEAN, np.float32) / np.array(IMAGENET_STD, np.float32)
    x = image.astype(np.float32) * scale - shift
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class FolderPairs(SegDataset):
    """A data folder (`personseg.folders`): `root/images/*` with `root/masks/<stem>.png`, 255 person,
    0 background, 128 don't-care (valid = 0). Masks of another size are resized to their image
    (nearest), with one warning per folder. Empty masks are valid samples (no person). Files that
    `root/split.csv` marks other than `train` are never trained on (portraits: 51 rows marked `none`)."""

    def __init__(self, root: str | Path, split: str = "train", size: tuple[int, int] = (320, 180),
                 augment: str = "none", limit: int = 0, val_every: int = VAL_EVERY, seed: int = 0,
                 with_sdm: bool = False, source: str | None = None, mask_dir: str = "masks",
                 orient_val: bool = False, heads: bool = False):
        self.root = Path(root)
        super().__init__(source or self.root.name, size, augment, seed, with_sdm, orient_val, heads)
        pairs, unpaired = list_pairs(self.root, None, val_every, mask_dir)
        if unpaired:
            warnings.warn(f"{self.root}: {len(unpaired)} images have no mask in {mask_dir}/; skipped")
        usable = set(screen_pairs(self.root / mask_dir, pairs))
        pairs = [pair for pair in list_pairs(self.root, split, val_every, mask_dir)[0] if pair in usable]
        self.pairs = pairs[:limit] if limit else pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int, seed: int) -> dict[str, Any]:
        img_path, mask_path = self.pairs[i]
        image, gray = read_pair(img_path, mask_path)
        mask, valid = decode_mask(gray)
        return {"image": image, "mask": mask, "valid": valid, "name": img_path.stem}


class LabelMaps(SegDataset):
    """Clothing Co-Parsing style: `root/images/*.jpg` + `root/labels/*.png` (uint8, 59 classes, 0 = null,
    names in label_names.txt). Person mask = label != 0. With `heads` the sample's `labels` are the
    six body-part classes (`personseg.parts.ccp_parts`)."""

    def __init__(self, root: str | Path, split: str = "train", size: tuple[int, int] = (320, 180),
                 augment: str = "none", limit: int = 0, val_every: int = VAL_EVERY, seed: int = 0,
                 with_sdm: bool = False, source: str | None = None, orient_val: bool = False, heads: bool = False):
        self.root = Path(root)
        super().__init__(source or self.root.name, size, augment, seed, with_sdm, orient_val, heads)
        usable = set(screen_pairs(self.root / "labels", list_pairs(self.root, None, val_every, "labels")[0]))
        pairs = [pair for pair in list_pairs(self.root, split, val_every, mask_dir="labels")[0] if pair in usable]
        self.pairs = pairs[:limit] if limit else pairs
        names_file = self.root / "label_names.txt"
        self.label_names = [line.split(maxsplit=1)[1] for line in names_file.read_text().splitlines()
                            if line.strip()] if names_file.is_file() else []

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int, seed: int) -> dict[str, Any]:
        img_path, label_path = self.pairs[i]
        image, labels = read_pair(img_path, label_path)
        raw = {"image": image, "mask": (labels != 0).astype(np.uint8), "name": img_path.stem}
        if self.heads:
            raw["labels"] = ccp_parts(labels, self.label_names)
        return raw


class CocoPersons(SegDataset):
    """COCO-format instances (pycocotools): mask = union of the `person` instance masks; `iscrowd`
    regions not covered by an instance are ignored (valid = 0). Images are those with a person
    annotation, sorted by file name for the split rule."""

    def __init__(self, images_dir: str | Path, annotation_json: str | Path, split: str = "train",
                 size: tuple[int, int] = (320, 180), augment: str = "none", limit: int = 0,
                 val_every: int = VAL_EVERY, seed: int = 0, with_sdm: bool = False, source: str = "coco",
                 orient_val: bool = False, heads: bool = False):
        from pycocotools.coco import COCO  # optional source: import only when used

        super().__init__(source, size, augment, seed, with_sdm, orient_val, heads)
        self.images_dir = Path(images_dir)
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
            self.coco = COCO(str(annotation_json))
        self.cat_ids = self.coco.getCatIds(catNms=["person"])
        ids = sorted(self.coco.getImgIds(catIds=self.cat_ids), key=lambda i: self.coco.imgs[i]["file_name"])
        ids = split_items(ids, split, val_every)
        ok = set(readable([self.images_dir / self.coco.imgs[i]["file_name"] for i in ids], str(self.images_dir)))
        ids = [i for i in ids if self.images_dir / self.coco.imgs[i]["file_name"] in ok]
        self.ids = ids[:limit] if limit else ids

    def __len__(self) -> int:
        return len(self.ids)

    def instances(self, image_id: int, shape: tuple[int, int]) -> Iterator[tuple[dict, np.ndarray]]:
        """Each person annotation of the image (crowds included) with its uint8 mask at `shape` (H, W)."""
        for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, catIds=self.cat_ids, iscrowd=None)):
            m = self.coco.annToMask(ann)
            yield ann, m if m.shape == shape else cv2.resize(m, shape[::-1], interpolation=cv2.INTER_NEAREST_EXACT)

    def load(self, i: int, seed: int) -> dict[str, Any]:
        info = self.coco.imgs[self.ids[i]]
        image = read_rgb(self.images_dir / info["file_name"])
        h, w = image.shape[:2]
        mask, crowd = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
        unlabelled, people = np.zeros((h, w), np.uint8), []  # persons without keypoints; (17, 3) keypoints
        for ann, m in self.instances(info["id"], (h, w)):
            (crowd if ann.get("iscrowd", 0) else mask)[m > 0] = 1
            if ann.get("num_keypoints", 0) > 0 and not ann.get("iscrowd", 0):
                people.append(np.asarray(ann["keypoints"], np.float32).reshape(-1, 3))
            else:
                unlabelled[m > 0] = 1
        valid = 1 - (crowd & (1 - mask))
        raw = {"image": image, "mask": mask, "valid": valid, "name": Path(info["file_name"]).stem}
        if self.heads:
            raw["keypoints"] = np.stack(people) if people else np.zeros((0, len(COCO_KEYPOINTS), 3), np.float32)
            raw["kp_ignore"] = unlabelled | crowd
        return raw


class CocoPersonCrops(CocoPersons):
    """Top-down keypoint samples (SimpleBaseline's): one per person with labelled keypoints in the COCO
    images of the split, the photo cropped around the person's box as `personseg.keypoints.crop_window`
    cuts it at inference (grown by CROP_PAD, to the tall input's aspect). Training crops jitter the
    box's scale (x0.85-1.25) and centre (up to 10% of the box), turn half of them by up to `rotate`
    degrees (SimpleBaseline turns by up to 40) and mirror half (left and right joints swapped). The
    heatmap targets are that person's joints only; the other people's pixels are don't-care. The crop is made at the tall input size (train with data.tall_share 1); this jitter is
    the source's augmentation (its `augment` setting is not used)."""

    rotate = 30.0

    def __init__(self, images_dir: str | Path, annotation_json: str | Path, split: str = "train", **kwargs):
        super().__init__(images_dir, annotation_json, split, **{**kwargs, "augment": "none"})
        self.people = [(image_id, ann) for image_id in self.ids
                       for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, catIds=self.cat_ids))
                       if ann.get("num_keypoints", 0) > 0 and not ann.get("iscrowd", 0)]
        self.jitter = split == "train"

    def __len__(self) -> int:
        return len(self.people)

    def load(self, i: int, seed: int) -> dict[str, Any]:
        image_id, target = self.people[i]
        info = self.coco.imgs[image_id]
        image = read_rgb(self.images_dir / info["file_name"])
        h, w = image.shape[:2]
        mask, crowd, others = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
        for ann, m in self.instances(image_id, (h, w)):
            (crowd if ann.get("iscrowd", 0) else mask)[m > 0] = 1
            if ann["id"] != target["id"]:
                others[m > 0] = 1
        valid = 1 - (crowd & (1 - mask))
        x, y, bw, bh = target["bbox"]
        scale, shift, flip, angle = 1.0, (0.0, 0.0), False, 0.0
        if self.jitter:
            rng = np.random.default_rng(seed)
            scale, shift, flip = rng.uniform(0.85, 1.25), rng.uniform(-0.1, 0.1, 2) * (bw, bh), rng.random() < 0.5
            angle = rng.uniform(-self.rotate, self.rotate) if rng.random() < 0.5 else 0.0
        cx, cy = x + bw / 2 + shift[0], y + bh / 2 + shift[1]
        bw, bh = bw * scale, bh * scale
        size = (max(self.size), min(self.size))  # (H, W) of the tall input
        window = crop_window((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), size)
        image = crop(image, window, size, PAD_COLOR)
        mask, valid, others = (crop(m, window, size, 0, cv2.INTER_NEAREST) for m in (mask, valid, others))
        kp = window_keypoints(np.reshape(target["keypoints"], (-1, 3)), window)[None].astype(np.float32)
        if angle:  # about the crop's centre (pixel indices are the coordinates minus 0.5)
            turn = cv2.getRotationMatrix2D((size[1] / 2 - 0.5, size[0] / 2 - 0.5), angle, 1.0)
            warp = lambda a, how, fill: cv2.warpAffine(a, turn, size[::-1], flags=how,  # noqa: E731
                                                       borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
            image = warp(image, cv2.INTER_LINEAR, PAD_COLOR)
            mask, valid, others = (warp(m, cv2.INTER_NEAREST, 0) for m in (mask, valid, others))
            kp[0, :, :2] = (kp[0, :, :2] - 0.5) @ turn[:, :2].T.astype(np.float32) + turn[:, 2].astype(np.float32) + 0.5
        if flip:
            image, mask, valid, others = (np.ascontiguousarray(a[:, ::-1]) for a in (image, mask, valid, others))
            kp[0, :, 0] = size[1] - kp[0, :, 0]
            kp = kp[:, list(FLIP)]
        raw = {"image": image, "mask": mask, "valid": valid, "name": f"{Path(info['file_name']).stem}_{target['id']}"}
        if self.heads:
            raw["keypoints"], raw["kp_ignore"] = kp, others
        return raw


def random_cutout(foregrounds: list[Path], rng: np.random.Generator, h: int) -> tuple[np.ndarray, np.ndarray]:
    """One of the RGBA `foregrounds`, `h` pixels tall, maybe mirrored: rgb (h, w, 3) float32, alpha (h, w)
    in [0, 1]. (Composites and the refiner's MattingScenes draw their people here.)"""
    rgba = cv2.imread(str(foregrounds[rng.integers(len(foregrounds))]), cv2.IMREAD_UNCHANGED)
    fg = cv2.cvtColor(rgba, cv2.COLOR_BGRA2RGBA)
    w = max(2, round(fg.shape[1] * h / fg.shape[0]))
    fg = cv2.resize(fg, (w, h), interpolation=cv2.INTER_AREA if h < fg.shape[0] else cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        fg = fg[:, ::-1]
    return fg[..., :3].astype(np.float32), fg[..., 3].astype(np.float32) / 255


class Composites(SegDataset):
    """Synthetic scenes: `min_people`..`max_people` RGBA cut-outs pasted onto a background at random
    scale (person height as a fraction of the background height, `scale_range`) and position, larger
    (nearer) people last. The cut-out's alpha edge is blurred with a small Gaussian; mask = composite
    alpha > 0.5, and `return_alpha=True` adds the soft `alpha` target. Sample i is a function of
    (seed, i) only. Length is virtual (`length` samples).

    `decoys` = (min, max) non-person objects pasted the same way among the people (labelled background,
    hiding what they cover): blobs of random shape cut from another background photo, colour-shifted.
    Without them every pasted thing is a person, and a model can learn the paste rather than the person."""

    def __init__(self, foregrounds: str | Path, backgrounds: str | Path, length: int = 1000, min_people: int = 1,
                 max_people: int = 4, scale_range: tuple[float, float] = (0.15, 0.9), split: str = "train",
                 size: tuple[int, int] = (320, 180), augment: str = "strong", val_every: int = VAL_EVERY,
                 seed: int = 0, with_sdm: bool = False, source: str = "composites", return_alpha: bool = False,
                 edge_sigma: float = 0.7, orient_val: bool = False, decoys: tuple[int, int] = (0, 0),
                 heads: bool = False):
        super().__init__(source, size, augment, seed, with_sdm, orient_val, heads)
        self.foregrounds = split_items(list_images(Path(foregrounds)), split, val_every)
        self.backgrounds = split_items(list_images(Path(backgrounds)), split, val_every)
        self.length, self.min_people, self.max_people = length, min_people, max_people
        self.decoys = tuple(decoys)
        self.scale_range, self.return_alpha, self.edge_sigma = scale_range, return_alpha, edge_sigma

    def __len__(self) -> int:
        return self.length

    def render(self, seed: int) -> dict[str, Any]:
        """dict(image (H, W, 3) uint8, alpha (H, W) float32 in [0, 1], layers: [(x, y, alpha patch)])."""
        rng = np.random.default_rng(seed)
        image = read_rgb(self.backgrounds[rng.integers(len(self.backgrounds))]).astype(np.float32)
        H, W = image.shape[:2]
        alpha = np.zeros((H, W), np.float32)
        n = int(rng.integers(self.min_people, self.max_people + 1))
        n_decoys = int(rng.integers(self.decoys[0], self.decoys[1] + 1)) if self.decoys[1] else 0
        kinds = rng.permutation([True] * n + [False] * n_decoys) if n_decoys else [True] * n  # True: a person
        scales = np.sort(rng.uniform(*self.scale_range, size=n + n_decoys))  # far (small) ones first
        layers = []
        for scale, person in zip(scales, kinds):
            h = max(4, round(scale * H))
            rgb, a = self.person(rng, h) if person else self.decoy(rng, h)
            w = a.shape[1]
            pad = 3  # room for the blurred edge
            a = cv2.GaussianBlur(np.pad(a, pad), (0, 0), self.edge_sigma)
            rgb = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
            x = int(rng.integers(-w // 2, W - w // 2)) - pad
            y = int(rng.integers(-h // 4, max(-h // 4 + 1, H - 3 * h // 4))) - pad
            if paste(image, alpha, rgb, a, x, y, person=person) and person:
                layers.append((x, y, a))
        return {"image": image.round().clip(0, 255).astype(np.uint8), "alpha": alpha, "layers": layers}

    def person(self, rng: np.random.Generator, h: int) -> tuple[np.ndarray, np.ndarray]:
        return random_cutout(self.foregrounds, rng, h)

    def decoy(self, rng: np.random.Generator, h: int) -> tuple[np.ndarray, np.ndarray]:
        """A non-person object `h` pixels tall: a smooth random blob (a thresholded low-resolution noise
        field under an elliptic falloff) of a crop of some background, its colours scaled and shifted."""
        w = max(2, round(h * rng.uniform(0.25, 1.5)))
        field = cv2.resize(rng.random((5, 5)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        yy, xx = np.mgrid[-1:1:h * 1j, -1:1:w * 1j]
        a = ((field + 0.6 * (1 - xx ** 2 - yy ** 2)) > 0.75).astype(np.float32)
        if not a.any():
            a = (xx ** 2 + yy ** 2 < 1).astype(np.float32)
        texture = read_rgb(self.backgrounds[rng.integers(len(self.backgrounds))])
        th, tw = texture.shape[:2]
        ch = max(2, round(th * rng.uniform(0.2, 1)))
        cw = min(tw, max(2, round(ch * w / h)))
        y0, x0 = int(rng.integers(0, th - ch + 1)), int(rng.integers(0, tw - cw + 1))
        rgb = cv2.resize(texture[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        rgb = rgb * rng.uniform(0.6, 1.4, 3) + rng.uniform(-40, 40, 3)
        return rgb.clip(0, 255), a

    def load(self, i: int, seed: int) -> dict[str, Any]:
        scene = self.render(seed)
        raw = {"image": scene["image"], "mask": (scene["alpha"] > 0.5).astype(np.uint8), "name": f"composite_{i}"}
        if self.return_alpha:
            raw["alpha"] = (scene["alpha"] * 255).round().astype(np.uint8)
        return raw


class CopyPaste(SegDataset):
    """Simple Copy-Paste (Ghiasi et al., CVPR 2021): COCO person instances cut out with their masks and
    pasted, 1 to `max_people` per scene, at random scale and position onto person-free photos
    (`backgrounds`: folders of images, e.g. negatives/images and composites/backgrounds). Only the
    instance's own pixels travel (people beside it in its photo stay behind); the mask edge is
    softened by a small Gaussian, mask = alpha > 0.5. Instances and backgrounds both follow the split
    rule, so validation and held-back photos are never pasted into training scenes."""

    def __init__(self, images_dir: str | Path, annotation_json: str | Path, backgrounds: list[str | Path],
                 length: int = 1000, max_people: int = 3, min_area: int = 2500, split: str = "train",
                 size: tuple[int, int] = (320, 180), augment: str = "mild", val_every: int = VAL_EVERY,
                 seed: int = 0, with_sdm: bool = False, source: str = "copypaste", orient_val: bool = False,
                 heads: bool = False):
        from pycocotools.coco import COCO  # optional source: import only when used

        super().__init__(source, size, augment, seed, with_sdm, orient_val, heads)
        self.images_dir = Path(images_dir)
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(str(annotation_json))
        cat_ids = self.coco.getCatIds(catNms=["person"])
        ids = sorted(self.coco.getImgIds(catIds=cat_ids), key=lambda i: self.coco.imgs[i]["file_name"])
        ids = split_items(ids, split, val_every)
        ok = set(readable([self.images_dir / self.coco.imgs[i]["file_name"] for i in ids], str(self.images_dir)))
        self.instances = [ann for img_id in ids if self.images_dir / self.coco.imgs[img_id]["file_name"] in ok
                          for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=img_id, catIds=cat_ids))
                          if not ann.get("iscrowd", 0) and ann["area"] >= min_area]
        self.backgrounds = [p for folder in backgrounds
                            for p in readable(split_items(list_images(Path(folder)), split, val_every), str(folder))]
        if not self.instances or not self.backgrounds:
            raise ValueError(f"{source}: needs COCO person instances of area >= {min_area} and background "
                             f"photos; found {len(self.instances)} and {len(self.backgrounds)}")
        self.length, self.max_people = length, max_people

    def __len__(self) -> int:
        return self.length

    def instance(self, ann: dict) -> tuple[np.ndarray, np.ndarray]:
        """The instance's box crop: rgb (h, w, 3) float32 and its mask (h, w) float32 in {0, 1}."""
        info = self.coco.imgs[ann["image_id"]]
        image = read_rgb(self.images_dir / info["file_name"])
        m = self.coco.annToMask(ann)
        if m.shape != image.shape[:2]:
            m = cv2.resize(m, image.shape[1::-1], interpolation=cv2.INTER_NEAREST_EXACT)
        ys, xs = np.nonzero(m)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        return image[y0:y1, x0:x1].astype(np.float32), m[y0:y1, x0:x1].astype(np.float32)

    def load(self, i: int, seed: int) -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        image = read_rgb(self.backgrounds[rng.integers(len(self.backgrounds))]).astype(np.float32)
        H, W = image.shape[:2]
        alpha = np.zeros((H, W), np.float32)
        for _ in range(int(rng.integers(1, self.max_people + 1))):
            rgb, a = self.instance(self.instances[rng.integers(len(self.instances))])
            h = max(8, round(H * rng.uniform(0.2, 0.95)))
            w = max(2, round(a.shape[1] * h / a.shape[0]))
            if w > W:  # a wide instance: fit the width instead
                h, w = max(2, round(h * W / w)), W
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
            a = cv2.GaussianBlur(cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR), (0, 0), 0.7)
            if rng.random() < 0.5:
                rgb, a = rgb[:, ::-1], a[:, ::-1]
            x = int(rng.integers(-w // 4, max(-w // 4 + 1, W - 3 * w // 4)))
            y = int(rng.integers(0, max(1, H - h // 2)))
            paste(image, alpha, rgb, a, x, y)
        return {"image": image.round().clip(0, 255).astype(np.uint8), "mask": (alpha > 0.5).astype(np.uint8),
                "name": f"copypaste_{i}"}


def paste(image: np.ndarray, alpha: np.ndarray, rgb: np.ndarray, a: np.ndarray, x: int, y: int,
          person: bool = True) -> bool:
    """Composite the cut-out `rgb` (h, w, 3) float with alpha `a` (h, w) in [0, 1] over `image` (H, W, 3)
    float and its running person `alpha` (H, W), top-left at (x, y), both in place; only the part
    landing inside counts (`person=False`: an object, hiding the person alpha it covers). Returns False
    when nothing lands inside."""
    H, W = alpha.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + a.shape[1], W), min(y + a.shape[0], H)
    if x1 <= x0 or y1 <= y0:
        return False
    pa, pr = a[y0 - y:y1 - y, x0 - x:x1 - x], rgb[y0 - y:y1 - y, x0 - x:x1 - x]
    image[y0:y1, x0:x1] = pa[..., None] * pr + (1 - pa[..., None]) * image[y0:y1, x0:x1]
    alpha[y0:y1, x0:x1] = (pa if person else 0) + (1 - pa) * alpha[y0:y1, x0:x1]
    return True


class SyntheticClips(Dataset):
    """Clips of `length` frames from still images by a smooth random affine motion (for video models).

    Returns dict(frames (T, 3, H, W), masks (T, 1, H, W), valid (T, 1, H, W), name, source, and sdm
    (T, 1, H, W) per frame when `with_sdm`): the still's sample moved from one random pose (shift up to
    `max_shift` of the size, rotation up to `max_angle` degrees, zoom up to `max_zoom`) to another with
    a cosine ease; pixels that come from outside the picture are invalid. `jitter` > 0 also changes each
    frame's look on its own, as a camera's exposure, noise and focus do from frame to frame (gain up to
    1 +- 0.5 jitter, offset up to +-jitter per channel and noise up to 0.3 jitter, in normalized units; a
    3x3 blur on some frames): a model that looks at one frame flickers on such clips, one that carries its
    state can learn not to. Deterministic given the key:
    an index, or a sampler's (source, item, seed, tall) key for a `MixedDataset` (its seed drives the
    motion too)."""

    def __init__(self, dataset: Dataset, length: int = 8, seed: int = 0, max_shift: float = 0.1,
                 max_angle: float = 8.0, max_zoom: float = 0.15, jitter: float = 0.0):
        self.dataset, self.length, self.seed, self.jitter = dataset, length, seed, jitter
        self.max_shift, self.max_angle, self.max_zoom = max_shift, max_angle, max_zoom
        self.with_sdm = False

    def __len__(self) -> int:
        return len(self.dataset)

    def set_sdm(self, on: bool) -> None:
        self.with_sdm = on  # computed on the moved masks, not taken from the still

    def __getitem__(self, key: int | tuple) -> dict[str, Any]:
        s = self.dataset[key]
        motion_seed = key[2] if isinstance(key, tuple) else key
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + motion_seed)
        limits = torch.tensor([self.max_shift, self.max_shift, math.radians(self.max_angle), self.max_zoom])
        start, end = [(torch.rand(4, generator=g) * 2 - 1) * limits for _ in range(2)]
        t = torch.linspace(0, 1, self.length)
        ease = (1 - torch.cos(math.pi * t)) / 2
        tx, ty, angle, zoom = (start + (end - start) * ease[:, None]).unbind(1)  # each (T,)
        cos, sin = torch.cos(angle) / (1 + zoom), torch.sin(angle) / (1 + zoom)
        H, W = s["image"].shape[-2:]
        # output -> input pixel map in affine_grid's [-1, 1] coordinates: rotation corrected for the aspect
        theta = torch.stack([torch.stack([cos, -sin * H / W, 2 * tx], 1),
                             torch.stack([sin * W / H, cos, 2 * ty], 1)], 1)  # (T, 2, 3)
        grid = F.affine_grid(theta, [self.length, 1, H, W], align_corners=False)

        def warp(x: torch.Tensor, mode: str) -> torch.Tensor:
            return F.grid_sample(x.expand(self.length, *x.shape), grid, mode=mode, padding_mode="zeros",
                                 align_corners=False)

        frames = warp(s["image"], "bilinear")
        if self.jitter > 0:
            frames = self.jittered(frames, g)
        clip = {"frames": frames, "masks": warp(s["mask"], "nearest"),
                "valid": warp(s["valid"], "nearest"), "name": s["name"], "source": s["source"]}
        if self.with_sdm:
            clip["sdm"] = torch.stack([torch.from_numpy(signed_distance_map(m[0].numpy() > 0.5))[None]
                                       for m in clip["masks"]])
        return clip

    def jittered(self, frames: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Each frame of (T, 3, H, W) normalized frames with its own gain, offset, noise and maybe blur."""
        T, j = frames.shape[0], self.jitter

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=g) * 2 - 1

        gain = 1 + 0.5 * j * uniform(T, 1, 1, 1)
        offset = j * uniform(T, 3, 1, 1)
        sigma = 0.3 * j * torch.rand(T, 1, 1, 1, generator=g)
        out = frames * gain + offset + sigma * torch.randn(frames.shape, generator=g)
        blur = torch.rand(T, generator=g) < 0.25
        if blur.any():
            out[blur] = F.avg_pool2d(out[blur], 3, stride=1, padding=1, count_include_pad=False)
        return out


class MixedDataset(Dataset):
    """Training sources side by side; indexed by (source index, item index, seed, tall) from `MixSampler`
    (or by a flat int over the concatenation)."""

    def __init__(self, datasets: list[SegDataset], weights: list[float]):
        self.datasets, self.weights = datasets, weights

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def set_sdm(self, on: bool) -> None:
        for d in self.datasets:
            d.with_sdm = on

    def __getitem__(self, key: int | tuple) -> dict[str, Any]:
        if isinstance(key, tuple):
            src, *rest = key
            return self.datasets[src][tuple(rest)]
        for d in self.datasets:
            if key < len(d):
                return d[key]
            key -= len(d)
        raise IndexError("MixedDataset index out of range")


class MixSampler(Sampler):
    """Draws `num_samples` per epoch: the source by weight, the item from a per-source random
    permutation (so every file is seen before any repeats), an augmentation seed; then keeps every
    `world_size`-th draw from `rank` (like DistributedSampler, the same draws on every rank).
    Yields (source, item, seed, tall); `tall` is drawn once per run of `batch_size` draws of this
    rank (true with probability `tall_share`), so every batch has one orientation.

    `set_epoch(epoch, skip)` picks the epoch's draws and skips this rank's first `skip` (resuming)."""

    def __init__(self, sizes: list[int], weights: list[float], num_samples: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, batch_size: int = 1, tall_share: float = 0.0):
        self.sizes, self.weights, self.seed = sizes, torch.tensor(weights, dtype=torch.float64), seed
        self.rank, self.world_size = rank, world_size
        self.batch_size, self.tall_share = batch_size, tall_share
        self.per_rank = math.ceil(num_samples / world_size)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return self.per_rank - self.skip

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = self.per_rank * self.world_size
        sources = torch.multinomial(self.weights, total, replacement=True, generator=g).tolist()
        perms = [torch.randperm(n, generator=g).tolist() for n in self.sizes]
        seeds = torch.randint(2**31 - 1, (total,), generator=g).tolist()
        counts = [0] * len(self.sizes)
        draws = []
        for src, seed in zip(sources, seeds):
            draws.append((src, perms[src][counts[src] % self.sizes[src]], seed))
            counts[src] += 1
        mine = draws[self.rank::self.world_size]
        g_tall = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1009 + self.rank)
        tall = (torch.rand(-(-len(mine) // self.batch_size), generator=g_tall) < self.tall_share).tolist()
        mine = [draw + (tall[j // self.batch_size],) for j, draw in enumerate(mine)]
        return iter(mine[self.skip:])


SourceBuilder = Callable[[SourceConfig, Path, dict], SegDataset]
SOURCES: dict[str, SourceBuilder] = {}  # data.sources kind -> builder(src, data root, common keyword arguments)


def register_source(kind: str):
    """Make `kind` a value of data.sources[].kind; the builder gets the source's config, the data root
    (`root / src.path` is the source's folder; an absolute src.path wins) and the keyword arguments
    every dataset takes (split, size, augment, limit, ...)."""
    def decorator(builder: SourceBuilder) -> SourceBuilder:
        SOURCES[kind] = builder
        return builder
    return decorator


def _synthetic_length(src: SourceConfig, common: dict) -> int:
    """Scenes per epoch of a generated source: `length`, a tenth of it for validation, or `limit`."""
    if common["limit"]:
        return common["limit"]
    return src.length if common["split"] == "train" else max(1, src.length // common["val_every"])


@register_source("folder")
def _folder(src: SourceConfig, root: Path, common: dict) -> SegDataset:
    return FolderPairs(root / src.path, **common)


@register_source("labelmaps")
def _labelmaps(src: SourceConfig, root: Path, common: dict) -> SegDataset:
    return LabelMaps(root / src.path, **common)


@register_source("coco")
def _coco(src: SourceConfig, root: Path, common: dict) -> SegDataset:
    path = root / src.path
    images = path / "images" if (path / "images").is_dir() else path
    return CocoPersons(images, path / (src.annotations or "annotations.json"), **common)


@register_source("coco_people")
def _coco_people(src: SourceConfig, root: Path, common: dict) -> SegDataset:
    path = root / src.path
    images = path / "images" if (path / "images").is_dir() else path
    return CocoPersonCrops(images, path / (src.annotations or "annotations.json"), **common)


@register_source("copypaste")
def _copypaste(src: SourceConfig, root: Path, common: dict) -> SegDataset:
    path = root / src.path
    return CopyPaste(path / "images", path / (src.annotations or "annotations.json"),
                     [root / b for b in src.backgrounds], length=_synthetic_length(src, common),
                     max_people=src.people[1],
                     **{k: v for k, v in common.items() if k != "limit"})


@register_source("composites")
def _composites(src: SourceConfig, root: Path, common: dict) -> SegDataset:
    path = root / src.path
    return Composites(path / "foregrounds", path / "backgrounds", length=_synthetic_length(src, common),
                      min_people=src.people[0], max_people=src.people[1], decoys=src.decoys,
                      **{k: v for k, v in common.items() if k != "limit"})


def build_source(src: SourceConfig, cfg: TrainConfig, split: str, heads: bool = False) -> SegDataset:
    """One configured source for `split`; validation is never augmented. `heads`: samples carry the
    multi-task heads' targets (a multi-task model trains)."""
    if src.kind not in SOURCES:
        raise ValueError(f"source {src.name}: unknown kind {src.kind!r}; choose one of {', '.join(SOURCES)}")
    common = dict(split=split, size=cfg.data.input_size, augment=src.augment if split == "train" else "none",
                  limit=src.limit if split == "train" else (cfg.data.val_limit or src.limit),
                  val_every=cfg.data.val_every, seed=cfg.seed, source=src.name, orient_val=cfg.data.tall_share > 0,
                  heads=heads)
    return SOURCES[src.kind](src, data_root(cfg), common)


def build_train_dataset(cfg: TrainConfig, heads: bool = False) -> MixedDataset | SyntheticClips:
    """The training mix of every source with weight > 0; moving clips of it when `data.clip_length` > 0."""
    sources = [s for s in cfg.data.sources if s.weight > 0]
    if not sources:
        raise ValueError("data.sources: no source with weight > 0 to train on")
    datasets = [build_source(s, cfg, "train", heads) for s in sources]
    for src, dataset in zip(sources, datasets):
        if len(dataset) == 0:
            raise ValueError(f"data source {src.name} ({data_root(cfg) / src.path}): no usable training samples; "
                             f"check it with `personseg data check`, or set data.sources weight 0 for {src.name}")
    mix = MixedDataset(datasets, [s.weight for s in sources])
    if not cfg.data.clip_length:
        return mix
    return SyntheticClips(mix, cfg.data.clip_length, seed=cfg.seed, jitter=cfg.data.clip_jitter)


def build_train_sampler(dataset: MixedDataset | SyntheticClips, cfg: TrainConfig, rank: int = 0,
                        world_size: int = 1) -> MixSampler:
    dataset = dataset.dataset if isinstance(dataset, SyntheticClips) else dataset
    num = cfg.data.samples_per_epoch or len(dataset)
    return MixSampler([len(d) for d in dataset.datasets], dataset.weights, num, cfg.seed, rank, world_size,
                      cfg.optim.batch_size, cfg.data.tall_share)


def build_val_datasets(cfg: TrainConfig, heads: bool = False) -> dict[str, SegDataset]:
    """One validation dataset per source (weight 0 sources included), by source name."""
    return {s.name: build_source(s, cfg, "val", heads) for s in cfg.data.sources}


def write_composite_folder(data_root: str | Path, out: str | Path, count: int = 120, seed: int = 1234,
                           min_people: int = 2, max_people: int = 6,
                           scale_range: tuple[float, float] = (0.1, 0.5)) -> Path:
    """A fixed "several small people" evaluation set: `count` composites of the validation cut-outs on the
    validation backgrounds, written as out/images/NNNN.png + out/masks/NNNN.png (lossless). Scene i is a
    function of (seed, i) only, so every run writes the same set."""
    root = Path(data_root) / "composites"
    scenes = Composites(root / "foregrounds", root / "backgrounds", length=count, min_people=min_people,
                        max_people=max_people, scale_range=scale_range, split="val", augment="none")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        scene = scenes.render(seed * 1_000_003 + i)
        mask = np.where(scene["alpha"] > 0.5, 255, 0).astype(np.uint8)
        cv2.imwrite(str(out / "images" / f"{i:04d}.png"), cv2.cvtColor(scene["image"], cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / "masks" / f"{i:04d}.png"), mask)
    return out
