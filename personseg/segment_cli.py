"""`personseg segment`: segment images, folders or globs and save masks, cut-outs, overlays.

A thin caller of `Predictor`: read a batch, `predict_batch`, render and write each output atomically.
A bad image is reported in one line and skipped; the run goes on and exits 1 with a summary.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from personseg.cli import add_predictor_arguments, load_predictor, positive_int, save_kinds
from personseg.parts import legend
from personseg.render import HEAD_OUTPUTS, OUTPUTS, suffix_of
from personseg.tempfiles import atomic_write

DEFAULT_SAVE = ["mask", "cutout"]

EPILOG = """\
outputs (in OUTDIR, for an input photo.jpg):
""" + "".join(f"  {'photo' + o.suffix:22}{o.about}\n" for o in OUTPUTS.values()) + """
with --model parts (a model with body-part and landmark heads), --save parts and --save landmarks:
""" + "".join(f"  {'photo' + o.suffix:22}{o.about}\n" for o in HEAD_OUTPUTS.values()) + """
part classes and their colours in photo_parts_color.png:
""" + "".join(f"  {line}\n" for line in legend().splitlines()) + """
Every output has the size of the photo as displayed (after EXIF rotation). When inputs from
different folders share a name (a/1.jpg, b/1.jpg), OUTDIR mirrors their folders (OUTDIR/a/1_mask.png,
OUTDIR/b/1_mask.png). Existing outputs are kept unless --overwrite; inputs are never modified.

exit status: 0 every image done; 1 some images failed (each named on stderr, then a summary);
2 bad arguments, no inputs, or the model could not be loaded.

examples:
  personseg segment photo.jpg -o out
  personseg segment --example -o out          (scikit-image's astronaut, a public-domain photo)
  personseg segment photos/ -o out --recursive --save mask,overlay
  personseg segment product_shots/ -o out --keep largest      (the main person only, no bystanders)
  personseg segment "shots/*.png" -o out --save background --background "#00b140"
  personseg segment photos/ -o out --save all --model runs/exp1/best.pt --device cuda --batch-size 16
  personseg segment photo.jpg -o out --model parts --save mask,parts,landmarks
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="image files, folders (their jpg/jpeg/png/bmp/tif/tiff/webp/gif files) or glob patterns")
    parser.add_argument("--example", action="store_true",
                        help="also segment a real example photo (scikit-image's public-domain astronaut, "
                             "from scikit-image, written to OUTDIR/astronaut.png first)")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR",
                        help="folder for the outputs (created if missing)")
    parser.add_argument("--save", type=save_kinds, action="append", metavar="KINDS",
                        help=f"what to write: {', '.join(OUTPUTS)} or all; with --model parts also parts "
                             f"and landmarks; comma-separated or repeated (default: {','.join(DEFAULT_SAVE)})")
    parser.add_argument("--background", default="blur", metavar="BG",
                        help="background for --save background: blur (the photo's own background, blurred), "
                             "a colour (white, black, green, blue, red, gray, #RRGGBB or R,G,B) "
                             "or an image file, resized to cover (default: blur)")
    add_predictor_arguments(parser)
    parser.add_argument("--batch-size", type=positive_int, default=4, metavar="N",
                        help="images read and run together; lower it if memory runs out (default: 4)")
    parser.add_argument("--recursive", action="store_true",
                        help="also look in subfolders of folder inputs, and let ** in globs cross folders")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs (default: report them as errors and keep them)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar and no summary when every image succeeds")


def output_bases(inputs: list[Path]) -> dict[Path, Path]:
    """Input -> its output path relative to OUTDIR, without the kind suffix.

    The stem alone while stems are unique; otherwise the input's folder relative to the inputs' common
    folder plus the stem, and the extension too if two files differ only by it (a.jpg, a.png).
    """
    if max(Counter(p.stem.lower() for p in inputs).values()) == 1:
        return {p: Path(p.stem) for p in inputs}
    folders = {p: p.resolve().parent for p in inputs}
    root = Path(os.path.commonpath(list(folders.values())))
    bases = {p: folders[p].relative_to(root) / p.stem for p in inputs}
    clashes = Counter(str(b).lower() for b in bases.values())
    return {p: b.with_name(f"{b.name}_{p.suffix[1:]}") if clashes[str(b).lower()] > 1 else b
            for p, b in bases.items()}


def write_example_photo(outdir: Path) -> Path:
    """scikit-image's astronaut (Eileen Collins, NASA, public domain), written to OUTDIR/astronaut.png
    (atomically, kept if there). Raises ImportError with the install line when scikit-image is missing."""
    from PIL import Image

    try:
        from skimage import data
    except ImportError as e:
        raise ImportError("--example reads scikit-image's public-domain astronaut: pip install scikit-image "
                          "(or give a photo of your own as INPUT)") from e
    path = outdir / "astronaut.png"
    if not path.exists():
        with atomic_write(path, suffix=".png") as temp:  # a reader never sees half a photo
            Image.fromarray(data.astronaut()).save(temp)
    return path


def find_inputs(items: list[str], recursive: bool) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The images of `items` (files, folders, globs), each once, sorted; and the items that gave none,
    with the reason (a missing path, an empty folder)."""
    from personseg.imageio import list_inputs

    found: dict[Path, Path] = {}  # resolved -> as given
    unusable: list[tuple[Path, str]] = []
    for item in items:
        try:
            listed = list_inputs([item], recursive=recursive)
        except FileNotFoundError as e:
            unusable.append((Path(item), str(e).split(": ", 1)[-1]))
            continue
        if not listed:
            unusable.append((Path(item), f"no images in this folder{_subfolder_hint(recursive)}"))
        for path in listed:
            found.setdefault(path.resolve(), path)
    return sorted(found.values(), key=str), unusable


def _subfolder_hint(recursive: bool) -> str:
    return "" if recursive else " (add --recursive to look in subfolders)"


def output_plan(inputs: list[Path], outdir: Path, kinds: list[str]) -> dict[Path, dict[str, Path]]:
    """Input -> {kind: output path}: OUTDIR / the input's `output_bases` name + the kind's suffix."""
    return {p: {k: outdir / base.with_name(base.name + suffix_of(k)) for k in kinds}
            for p, base in output_bases(inputs).items()}


class UsageError(Exception):
    """Bad arguments, found before any image is segmented: one line on stderr, exit status 2."""


def _check(args: argparse.Namespace) -> tuple[list[Path], list[tuple[Path, str]], list[str], object]:
    """(inputs, unusable items with their reason, output kinds, background), or UsageError."""
    from personseg import render
    from personseg.imageio import max_pixels

    try:
        max_pixels()  # a bad $PERSONSEG_MAX_PIXELS is a usage error, not a traceback at the first image
    except ValueError as e:
        raise UsageError(str(e)) from None
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise UsageError(f"-o {args.output}: is a file, not a folder; choose a folder for the outputs")
    items = list(args.inputs)
    if args.example:
        try:
            items.append(str(write_example_photo(Path(args.output))))
        except ImportError as e:
            raise UsageError(str(e)) from None
    if not items:
        raise UsageError("give at least one INPUT (or --example)")
    kinds = list(dict.fromkeys(k for group in args.save or [DEFAULT_SAVE] for k in group))
    try:
        background = render.parse_background(args.background) if "background" in kinds else None
    except ValueError as e:
        raise UsageError(f"--background: {e}") from None
    inputs, unusable = find_inputs(items, args.recursive)
    if not inputs and len(unusable) == 1:
        raise UsageError(f"{unusable[0][0]}: {unusable[0][1]}")
    if not inputs:
        raise UsageError(f"no images found in {' '.join(items)}{_subfolder_hint(args.recursive)}")
    return inputs, unusable, kinds, background


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    try:
        inputs, unusable, kinds, background = _check(args)
        try:
            predictor = load_predictor(args)  # --threshold: --keep largest picks its region at it too
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot load the model: {e}") from None
        heads = [k for k in kinds if k in HEAD_OUTPUTS]
        if heads and not predictor.has_heads:
            raise UsageError(f"--save {','.join(heads)}: {args.model or 'the default model'} has no part or "
                             "landmark heads; use --model parts")
    except UsageError as e:
        print(f"personseg segment: {e}", file=sys.stderr)
        return 2
    outdir = Path(args.output)
    for path, reason in unusable:
        print(f"error: {path}: {reason}", file=sys.stderr)
    bar = tqdm(total=len(inputs), unit="image", file=sys.stderr,
               disable=args.quiet or len(inputs) < 2 or not sys.stderr.isatty())
    job = _Segmentation(predictor, output_plan(inputs, outdir, kinds), background, args.overwrite, bar)
    try:
        job.run(inputs, args.batch_size)
    except KeyboardInterrupt:
        bar.close()
        print(f"personseg segment: interrupted after {bar.n} of {len(inputs)} images; every image's outputs "
              "are whole, rerun to do the rest (existing outputs are kept unless --overwrite)", file=sys.stderr)
        return 130
    bar.close()

    failures = unusable + job.failures
    done = len(inputs) - len(job.failures)
    summary = f"{done} image{'s' if done != 1 else ''} segmented into {outdir}"
    if failures:
        listing = ", ".join(f"{path} ({reason})" for path, reason in failures)
        print(f"{summary}, {len(failures)} failed: {listing}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(summary, file=sys.stderr)
    return 0


class _Segmentation:
    """The batch loop of `run`: read, segment and write each image's outputs (all of them or none);
    a failed image is reported (`failures`) and the rest go on."""

    def __init__(self, predictor, plan: dict[Path, dict[str, Path]], background, overwrite: bool, bar):
        self.predictor, self.plan, self.background, self.overwrite, self.bar = predictor, plan, background, overwrite, bar
        self.originals = {p.resolve() for p in plan}
        self.failures: list[tuple[Path, str]] = []

    def run(self, inputs: list[Path], batch_size: int) -> None:
        heads = any(k in HEAD_OUTPUTS for kinds in self.plan.values() for k in kinds)
        for start in range(0, len(inputs), batch_size):
            batch = [(path, rgb) for path in inputs[start:start + batch_size] if (rgb := self._read(path)) is not None]
            if heads:  # parts and landmarks: one picture at a time through every head
                predictions = [self.predictor.predict_all(rgb) for _, rgb in batch]
            else:
                predictions = [{"alpha": a} for a in self.predictor.predict_batch([rgb for _, rgb in batch],
                                                                                  batch_size=batch_size)]
            for (path, rgb), prediction in zip(batch, predictions):
                if self._write(path, rgb, prediction):
                    self.bar.update()

    def fail(self, path: Path, reason: str) -> None:
        from tqdm import tqdm

        self.failures.append((path, reason))
        tqdm.write(f"error: {path}: {reason}", file=sys.stderr)
        self.bar.update()

    def _read(self, path: Path):
        """The image, or None (reported) if it cannot be read or its outputs must not be written."""
        from personseg import imageio

        outputs = self.plan[path].values()
        existing = next((out for out in outputs if out.exists()), None)
        if any(out.resolve() in self.originals for out in outputs):
            self.fail(path, "an output would replace an input file; choose another -o folder")
        elif existing is not None and not self.overwrite:
            self.fail(path, f"{existing} already exists (use --overwrite to replace it)")
        else:
            try:
                return imageio.read_image(path)
            except imageio.ImageReadError as e:
                self.fail(path, e.reason)
        return None

    def _write(self, path: Path, rgb, prediction: dict) -> bool:
        """Write every output of `path` atomically; False (reported) if one cannot be written."""
        from personseg import imageio, render

        created = []  # this image's outputs that did not exist before: removed if it is not finished
        try:
            for kind, out in self.plan[path].items():
                existed = out.exists()
                if kind in HEAD_OUTPUTS:
                    picture = HEAD_OUTPUTS[kind].render(rgb, prediction)
                else:
                    picture = render.output(kind, rgb, prediction["alpha"], self.predictor.threshold, self.background)
                if isinstance(picture, str):  # landmarks: JSON
                    with atomic_write(out, overwrite=self.overwrite) as temp, open(temp, "x", encoding="utf-8") as f:
                        f.write(picture)
                else:
                    imageio.write_image_atomic(out, picture, overwrite=self.overwrite)
                if not existed:
                    created.append(out)
        except (OSError, ValueError) as e:
            self.fail(path, f"cannot write the output: {e}")
            return False
        except BaseException:  # Ctrl-C, SIGTERM: no image is left with only some of its outputs
            for out in created:
                out.unlink(missing_ok=True)
            raise
        return True
