"""`personseg data`: download public person datasets into the folder layout, and check data folders.

    personseg data download hsd data/hsd
    personseg data download coco-person data/coco-person
    personseg data check data/hsd

Layout (what training and `personseg eval` read): DEST/images/NAME.jpg and DEST/masks/NAME.png, 8-bit,
0 = background, 255 = person, 128 = ignore (COCO crowd regions: many people under one rough outline;
they count neither as person nor as background).

Downloads go to DEST/downloads/FILE.part and are renamed to FILE once complete (and verified when the
registry knows the file's sha256). An interrupted download resumes from the .part file where the server
supports HTTP Range requests, and restarts otherwise. The archive stays in DEST/downloads (a second
run skips the download); delete it once the data is converted.

`data check` exit status: 1 when there is an error (unreadable image or mask, an image without a mask,
a mask without an image, a mask whose aspect ratio differs from its image's, mask values other than
0, 128 and 255); warnings (an empty mask, a mask of another size but the same aspect ratio, which
loaders resize) are listed but leave the exit status 0, since the shared data has both on purpose.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from personseg.folders import IGNORE, list_images, same_aspect
from personseg.imageio import ImageReadError, read_image, write_image_atomic
from personseg.tempfiles import atomic_write

CHUNK = 1 << 20
TIMEOUT_S = 60


class DownloadError(RuntimeError):
    """A download that failed, was cut short or did not match its checksum."""


# ---------------------------------------------------------------------------------------------------------
# Downloading


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _total_from_content_range(value: str | None) -> int | None:
    """`bytes 100-199/200` -> 200; None when absent or `*`."""
    match = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", value or "")
    return int(match.group(1)) if match else None


def download(url: str, path: str | Path, sha256: str | None = None, *, progress: bool = True,
             timeout: float = TIMEOUT_S) -> Path:
    """Download `url` to `path` via `path.part`, resuming a previous .part with an HTTP Range request.

    With `sha256` the finished file is checked; on a mismatch the .part is deleted and DownloadError
    raised. A complete `path` already there is kept (after the same check). A dropped connection leaves
    the .part for the next call to resume. Returns `path`.
    """
    from tqdm import tqdm

    path = Path(path)
    part = path.with_name(path.name + ".part")
    if path.exists():
        if sha256 is None or sha256_of(path) == sha256.lower():
            return path
        path.unlink()  # a stale or corrupt earlier download: fetch it again
    path.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "personseg"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not offset:
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
        # 416: nothing left after `offset`: the .part is complete if it has the server's full size.
        if _total_from_content_range(e.headers.get("Content-Range")) != offset:
            part.unlink()
            raise DownloadError(f"{url}: the server refused to resume {part.name}; it was deleted, "
                                "run the command again to start over") from None
        response = None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{url}: cannot connect ({getattr(e, 'reason', e)}); check the address or "
                            "your connection, or pass a mirror with --url") from None

    if response is not None:
        with response:
            if offset and response.status != 206:
                offset = 0  # the server ignored the Range header: start over
            elif offset and not (response.headers.get("Content-Range") or "").startswith(f"bytes {offset}-"):
                part.unlink()
                raise DownloadError(f"{url}: the server resumed at another offset than asked "
                                    f"({response.headers.get('Content-Range')}); {part.name} was deleted, "
                                    "run the command again to start over")
            length = response.headers.get("Content-Length")
            total = (_total_from_content_range(response.headers.get("Content-Range"))
                     or (offset + int(length) if length is not None else None))
            bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=path.name, file=sys.stderr, disable=not progress or not sys.stderr.isatty())
            received = offset
            try:
                with open(part, "ab" if offset else "wb") as f:
                    while block := response.read(CHUNK):
                        f.write(block)
                        received += len(block)
                        bar.update(len(block))
            except (OSError, http.client.HTTPException) as e:  # reset, timeout: keep the .part to resume
                raise DownloadError(f"{url}: the download stopped at {received:,} bytes ({e}); run the "
                                    "same command again to resume") from None
            finally:
                bar.close()
            if total is not None and received < total:
                raise DownloadError(f"{url}: the connection closed after {received:,} of {total:,} bytes; "
                                    "run the same command again to resume")

    if sha256 is not None:
        actual = sha256_of(part)
        if actual != sha256.lower():
            part.unlink()
            raise DownloadError(f"{url}: sha256 mismatch, expected {sha256.lower()}, got {actual}; the "
                                "download was deleted. Run again; if it repeats, the file at this address "
                                "changed (or --url points at a different file)")
    os.replace(part, path)
    return path


def extract(archive: str | Path, dest: str | Path) -> Path:
    """Unpack a zip or tar (any compression) into `dest`; the type comes from the content."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)  # zipfile drops absolute paths and ".." from member names
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            try:
                t.extractall(dest, filter="data")  # refuses links and paths leaving dest
            except tarfile.FilterError as e:
                raise DownloadError(f"{archive}: refused, member {e.tarinfo.name!r} would be written outside "
                                    "the folder (or is a link or device); use the dataset's own archive") from None
    else:
        raise DownloadError(f"{archive}: neither a zip nor a tar archive")
    return dest


# ---------------------------------------------------------------------------------------------------------
# Conversion to images/ + masks/


def _find_dir(root: Path, name: str) -> Path:
    found = sorted(p for p in root.rglob(name) if p.is_dir())
    if not found:
        raise DownloadError(f"{root}: no {name}/ folder in the archive; is --url the right file?")
    return found[0]


def _images_in(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in list_images(folder)}


def _read_mask_layer(path: Path) -> np.ndarray:
    """(H, W) uint8 from a mask file: its transparency if it has some, else its gray level."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            alpha = np.asarray(im.convert("RGBA"))[..., 3]
            if alpha.min() < 255:
                return alpha
        return np.asarray(im.convert("L"))


def convert_hsd(roots: list[Path], dest: Path) -> int:
    """Human-Segmentation-Dataset repository: Training_Images/N.jpg + Ground_Truth/N.png -> dest.

    Masks are thresholded at 128 to 0/255 and keep their size (some differ from their image; loaders
    resize them). Images are copied byte for byte. Returns the number of pairs written.
    """
    images = _images_in(_find_dir(roots[0], "Training_Images"))
    masks = _images_in(_find_dir(roots[0], "Ground_Truth"))
    pairs = sorted(set(images) & set(masks))
    if not pairs:
        raise DownloadError(f"{roots[0]}: no image in Training_Images/ has a mask in Ground_Truth/")
    for stem in pairs:
        _copy_atomic(images[stem], dest / "images" / images[stem].name)
        try:
            mask = _read_mask_layer(masks[stem])
        except (OSError, ValueError) as e:
            print(f"note: {masks[stem].name} skipped, not a readable image ({e})", file=sys.stderr)
            continue
        write_image_atomic(dest / "masks" / f"{stem}.png", np.where(mask >= 128, 255, 0).astype(np.uint8),
                           overwrite=True)
    unpaired = len(images) + len(masks) - 2 * len(pairs)
    if unpaired:
        print(f"note: {unpaired} file{'s' if unpaired != 1 else ''} without a partner skipped", file=sys.stderr)
    return len(pairs)


def convert_coco_person(roots: list[Path], dest: Path) -> int:
    """COCO 2017 val: every image with a person -> dest; person instances 255, crowd regions 128.

    roots: the extracted val2017.zip, then annotations_trainval2017.zip. Images without any person
    annotation are left out. Needs pycocotools.
    """
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise DownloadError("converting COCO needs pycocotools: pip install pycocotools") from None
    image_dir = _find_dir(roots[0], "val2017")
    annotations = sorted(roots[1].rglob("instances_val2017.json"))
    if not annotations:
        raise DownloadError(f"{roots[1]}: no instances_val2017.json in the annotations archive")
    coco = COCO(str(annotations[0]))
    person = coco.getCatIds(catNms=["person"])
    count = 0
    for image_id in sorted(coco.getImgIds(catIds=person)):
        info = coco.loadImgs(image_id)[0]
        mask = np.zeros((info["height"], info["width"]), np.uint8)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, catIds=person, iscrowd=None))
        for ann in sorted(anns, key=lambda a: not a.get("iscrowd", 0)):  # crowds first, people on top
            mask[coco.annToMask(ann) > 0] = IGNORE if ann.get("iscrowd", 0) else 255
        _copy_atomic(image_dir / info["file_name"], dest / "images" / info["file_name"])
        write_image_atomic(dest / "masks" / f"{Path(info['file_name']).stem}.png", mask, overwrite=True)
        count += 1
    return count


def _copy_atomic(source: Path, target: Path) -> None:
    with atomic_write(target) as temp:
        shutil.copyfile(source, temp)


# ---------------------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class Remote:
    url: str
    filename: str  # name in DEST/downloads
    sha256: str | None = None  # None: not known; the computed hash is printed instead


@dataclass(frozen=True)
class Dataset:
    description: str
    licence: str
    files: tuple[Remote, ...]
    convert: Callable[[list[Path], Path], int]  # (extracted archives in `files` order, DEST) -> pairs
    notes: list[str] = field(default_factory=list)


DATASETS: dict[str, Dataset] = {
    "hsd": Dataset(
        description="Human-Segmentation-Dataset (Vikram Shenoy): ~290 mixed scenes with person masks",
        licence="no licence file in the repository: research use only",
        files=(Remote("https://github.com/VikramShenoy97/Human-Segmentation-Dataset/archive/refs/heads/master.zip",
                      "Human-Segmentation-Dataset-master.zip"),),
        convert=convert_hsd,
        notes=["many masks are not the size of their image; loaders resize them (nearest)"],
    ),
    "coco-person": Dataset(
        description="COCO 2017 val images with a person (~2,700), masks from the instance annotations",
        licence="annotations CC BY 4.0; images under their Flickr licences (see cocodataset.org/#termsofuse)",
        files=(Remote("https://images.cocodataset.org/zips/val2017.zip", "val2017.zip"),
               Remote("https://images.cocodataset.org/annotations/annotations_trainval2017.zip",
                      "annotations_trainval2017.zip")),
        convert=convert_coco_person,
        notes=["crowd regions are 128 in the masks (ignored by training and evaluation)",
               "polygon outlines are coarse: edges are less precise than the portrait datasets'"],
    ),
}


def fetch(name: str, dest: str | Path, urls: list[str] | None = None, sha256s: list[str] | None = None,
          *, progress: bool = True, overwrite: bool = False, allow_unpinned: bool = False) -> int:
    """Download, verify, extract and convert dataset `name` into DEST/images + DEST/masks.

    `urls` / `sha256s` replace the registry's, file by file (mirrors, tests). Every file must be
    verified against a sha256 (the registry's pin or `sha256s`); a file with neither is refused before
    anything is fetched unless `allow_unpinned`. Returns the pairs written.
    """
    dataset, dest = DATASETS[name], Path(dest)
    urls = urls or [f.url for f in dataset.files]
    if len(urls) != len(dataset.files):
        raise ValueError(f"{name} has {len(dataset.files)} files ({', '.join(f.filename for f in dataset.files)}); "
                         f"give --url that many times, in this order")
    if sha256s is not None and len(sha256s) != len(dataset.files):
        raise ValueError(f"{name} has {len(dataset.files)} files; give --sha256 that many times, in order")
    for sub in ("images", "masks"):
        if not overwrite and (dest / sub).is_dir() and any((dest / sub).iterdir()):
            raise FileExistsError(f"{dest / sub} already holds files; choose an empty DEST or pass --overwrite")
    for i, remote in enumerate(dataset.files):
        if (sha256s[i] if sha256s is not None else remote.sha256) is None and not allow_unpinned:
            raise DownloadError(f"{name}: {remote.filename} has no pinned sha256, so the download cannot be "
                                "verified; pass --sha256 HEX (its published checksum) or --allow-unpinned "
                                "to download it unverified")

    roots = []
    for i, (remote, url) in enumerate(zip(dataset.files, urls)):
        expected = sha256s[i] if sha256s is not None else remote.sha256
        archive = download(url, dest / "downloads" / remote.filename, expected, progress=progress)
        if expected is None:
            print(f"{archive.name}: sha256 {sha256_of(archive)} (not verified: no known checksum)", file=sys.stderr)
        else:
            print(f"{archive.name}: sha256 verified", file=sys.stderr)
        roots.append(archive)
    work = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
    try:
        extracted = [extract(archive, work / f"{i}") for i, archive in enumerate(roots)]
        return dataset.convert(extracted, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# Checking a data folder


@dataclass
class Finding:
    level: str  # "error" or "warning"
    kind: str  # "unreadable image", "missing mask", ...
    path: Path
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.level}: {self.path}: {self.kind}{': ' + self.detail if self.detail else ''}"


@dataclass
class CheckReport:
    pairs: int = 0  # images with a mask that were both read
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    def summary(self) -> str:
        def counts(items: list[Finding]) -> str:
            return ", ".join(f"{kind} {n}" for kind, n in Counter(f.kind for f in items).items())
        errors, warnings = self.errors, self.warnings
        text = f"{self.pairs} image/mask pairs read; {len(errors)} error{'s' if len(errors) != 1 else ''}"
        text += f" ({counts(errors)})" if errors else ""
        text += f", {len(warnings)} warning{'s' if len(warnings) != 1 else ''}"
        return text + (f" ({counts(warnings)})" if warnings else "")


def check_folder(folder: str | Path, progress: bool = False) -> CheckReport:
    """Read every image and mask of `folder` (images/ + masks/) and report what would trouble a loader.

    Errors: unreadable image or mask, image without mask, mask without image, mask aspect ratio
    different from the image's, mask values other than 0, 128 (ignore) and 255.
    Warnings: empty mask (no person pixel), mask of another size with the same aspect ratio.
    """
    from tqdm import tqdm

    folder = Path(folder)
    for sub in ("images", "masks"):
        if not (folder / sub).is_dir():
            raise FileNotFoundError(f"{folder}: no {sub}/ folder; a data folder holds images/ and masks/")
    images, masks = _images_in(folder / "images"), _images_in(folder / "masks")
    report = CheckReport()
    add = report.findings.append
    if not images:
        add(Finding("error", "no images", folder / "images", "an empty data folder trains and evaluates nothing"))
    for stem in sorted(set(masks) - set(images)):
        add(Finding("error", "mask without image", masks[stem]))
    for stem in tqdm(sorted(images), unit="image", file=sys.stderr, disable=not progress or not sys.stderr.isatty()):
        try:
            image = read_image(images[stem])
        except ImageReadError as e:
            add(Finding("error", "unreadable image", images[stem], e.reason))
            image = None
        if stem not in masks:
            add(Finding("error", "missing mask", images[stem], f"no masks/{stem}.png"))
            continue
        try:
            mask = read_image(masks[stem])
        except ImageReadError as e:
            add(Finding("error", "unreadable mask", masks[stem], e.reason))
            continue
        if image is None:
            continue
        report.pairs += 1
        values = np.unique(mask)
        if mask.shape[2] == 3 and not (np.array_equal(mask[..., 0], mask[..., 1])
                                       and np.array_equal(mask[..., 0], mask[..., 2])):
            add(Finding("error", "non-binary mask", masks[stem], "colour mask; expected 8-bit gray 0/255"))
        elif not set(values.tolist()) <= {0, IGNORE, 255}:
            shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
            add(Finding("error", "non-binary mask", masks[stem], f"values {shown}; expected 0 and 255 (128 = ignore)"))
        elif not (mask[..., 0] == 255).any():
            add(Finding("warning", "empty mask", masks[stem], "no person pixel"))
        (ih, iw), (mh, mw) = image.shape[:2], mask.shape[:2]
        if (ih, iw) != (mh, mw):
            detail = f"mask {mw}x{mh}, image {iw}x{ih}"
            if not same_aspect((ih, iw), (mh, mw)):
                add(Finding("error", "size mismatch", masks[stem], detail + ", different aspect ratio"))
            else:
                add(Finding("warning", "size mismatch", masks[stem],
                            detail + ", same aspect ratio (resized when loaded)"))
    return report


# ---------------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "datasets:\n" + "\n".join(f"  {name:12s} {d.description}\n  {'':12s} licence: {d.licence}"
                                              for name, d in DATASETS.items())
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    download_parser = sub.add_parser("download", help="download a public dataset into DEST/images + DEST/masks")
    download_parser.add_argument("name", choices=list(DATASETS), metavar="NAME",
                                 help=f"the dataset: {', '.join(DATASETS)}")
    download_parser.add_argument("dest", metavar="DEST", help="folder to create images/ and masks/ in")
    download_parser.add_argument("--url", action="append", metavar="URL",
                                 help="download from here instead (a mirror); repeat for datasets of several files")
    download_parser.add_argument("--sha256", action="append", metavar="HEX",
                                 help="expected sha256 of the (--url) file; repeat like --url")
    download_parser.add_argument("--allow-unpinned", action="store_true",
                                 help="download files that have no pinned sha256 (and no --sha256) unverified; "
                                      "their computed sha256 is printed")
    download_parser.add_argument("--overwrite", action="store_true", help="write into a DEST that has data")
    check_parser = sub.add_parser("check", help="report problems in a data folder (images/ + masks/)",
                                  description="exit status: 1 when there is an error, 0 with warnings only")
    check_parser.add_argument("dir", metavar="DIR", help="a data folder with images/ and masks/")
    check_parser.add_argument("--quiet", action="store_true", help="only the summary line")


def run(args: argparse.Namespace) -> int:
    if args.action == "check":
        try:
            report = check_folder(args.dir, progress=not args.quiet)
        except FileNotFoundError as e:
            print(f"personseg data check: {e}", file=sys.stderr)
            return 2
        if not args.quiet:
            for finding in report.findings:
                print(finding)
        print(f"{args.dir}: {report.summary()}")
        return 1 if report.errors else 0

    dataset = DATASETS[args.name]
    print(f"{args.name}: {dataset.description}\nlicence: {dataset.licence}", file=sys.stderr)
    try:
        pairs = fetch(args.name, args.dest, args.url, args.sha256, progress=True, overwrite=args.overwrite,
                      allow_unpinned=args.allow_unpinned)
    except (DownloadError, ValueError, OSError) as e:
        print(f"personseg data download: {e}", file=sys.stderr)
        return 1
    for note in dataset.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{pairs} image/mask pairs in {Path(args.dest) / 'images'} and {Path(args.dest) / 'masks'}; "
          f"the archives stay in {Path(args.dest) / 'downloads'} (delete them if you like)", file=sys.stderr)
    return 0
