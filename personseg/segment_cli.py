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

from personseg.cli import positive_int, threshold

# --save kind -> file name suffix. Pictures for people to look at are JPEG (small); exact data is PNG.
OUTPUTS = {
    "mask": "_mask.png",
    "alpha": "_alpha.png",
    "cutout": "_cutout.png",
    "overlay": "_overlay.jpg",
    "compare": "_compare.jpg",
    "background": "_background.jpg",
}
DEFAULT_SAVE = ["mask", "cutout"]

EPILOG = """\
outputs (in OUTDIR, for an input photo.jpg):
  photo_mask.png        8-bit mask: 255 = person, 0 = background (alpha >= --threshold)
  photo_alpha.png       8-bit soft alpha, 0..255
  photo_cutout.png      RGBA cut-out: the photo with the soft alpha as transparency
  photo_overlay.jpg     the photo with the mask tinted green and outlined
  photo_compare.jpg     photo | mask | cut-out on a checkerboard, side by side
  photo_background.jpg  the person composited onto --background

Every output has the size of the photo as displayed (after EXIF rotation). When inputs from
different folders share a name (a/1.jpg, b/1.jpg), OUTDIR mirrors their folders (OUTDIR/a/1_mask.png,
OUTDIR/b/1_mask.png). Existing outputs are kept unless --overwrite; inputs are never modified.

exit status: 0 every image done; 1 some images failed (each named on stderr, then a summary);
2 bad arguments, no inputs, or the model could not be loaded.

examples:
  personseg segment photo.jpg -o out
  personseg segment --example -o out          (a real photo that ships in the package)
  personseg segment photos/ -o out --recursive --save mask,overlay
  personseg segment product_shots/ -o out --keep largest      (the main person only, no bystanders)
  personseg segment "shots/*.png" -o out --save background --background "#00b140"
  personseg segment photos/ -o out --save all --model runs/exp1/best.pt --device cuda --batch-size 16
"""


def _save_kinds(value: str) -> list[str]:
    kinds = [k.strip().lower() for k in value.split(",") if k.strip()]
    if kinds == ["all"]:
        return list(OUTPUTS)
    unknown = [k for k in kinds if k not in OUTPUTS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown output {', '.join(unknown) or value!r}; "
                                         f"choose from {', '.join(OUTPUTS)} or all")
    return kinds


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
    parser.add_argument("--save", type=_save_kinds, action="append", metavar="KINDS",
                        help=f"what to write: {', '.join(OUTPUTS)} or all; comma-separated or repeated "
                             f"(default: {','.join(DEFAULT_SAVE)})")
    parser.add_argument("--background", default="blur", metavar="BG",
                        help="background for --save background: blur (the photo's own background, blurred), "
                             "a colour (white, black, green, blue, red, gray, #RRGGBB or R,G,B) "
                             "or an image file, resized to cover (default: blur)")
    parser.add_argument("--threshold", type=threshold, metavar="T",
                        help="alpha at or above which a pixel is person, for mask, overlay and compare "
                             "(default: the model's own, usually 0.5)")
    parser.add_argument("--no-refine", action="store_true",
                        help="upsample the model's output bilinearly instead of with the edge-aware guided "
                             "filter (faster, softer edges)")
    parser.add_argument("--model", metavar="PATH_OR_NAME",
                        help="a checkpoint file or a shipped model name (accurate, fast) (default: the shipped "
                             "default model)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction,
                        help="also run the model on the mirror image and average: a little more accurate, "
                             "twice the model's time (default: the model's own setting: on for accurate, "
                             "off for fast and for your checkpoints)")
    parser.add_argument("--keep", choices=["all", "largest"], default="all",
                        help="all: every person found; largest: only the largest connected person region, "
                             "for one-person cut-outs of photos with bystanders (default: all)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where to run the model; auto picks cuda when a GPU is available (default: auto)")
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
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
        try:
            Image.fromarray(data.astronaut()).save(temp)
            os.replace(temp, path)  # atomic: a reader never sees half a photo
        finally:
            temp.unlink(missing_ok=True)
    return path


def run(args: argparse.Namespace) -> int:
    import personseg
    from tqdm import tqdm

    from personseg import render
    from personseg.imageio import ImageReadError, list_inputs, read_image, write_image_atomic

    def usage_error(message: str) -> int:
        print(f"personseg segment: {message}", file=sys.stderr)
        return 2

    from personseg.imageio import max_pixels

    try:
        max_pixels()  # a bad $PERSONSEG_MAX_PIXELS is a usage error, not a traceback at the first image
    except ValueError as e:
        return usage_error(str(e))
    if Path(args.output).exists() and not Path(args.output).is_dir():
        return usage_error(f"-o {args.output}: is a file, not a folder; choose a folder for the outputs")
    if args.example:
        try:
            args.inputs = [*args.inputs, str(write_example_photo(Path(args.output)))]
        except ImportError as e:
            return usage_error(str(e))
    if not args.inputs:
        return usage_error("give at least one INPUT (or --example)")
    kinds = list(dict.fromkeys(k for group in args.save or [DEFAULT_SAVE] for k in group))
    background = None
    if "background" in kinds:
        try:
            background = render.parse_background(args.background)
        except ValueError as e:
            return usage_error(f"--background: {e}")
    hint = "" if args.recursive else " (add --recursive to look in subfolders)"
    found: dict[Path, Path] = {}  # resolved -> as given
    unusable: list[tuple[Path, str]] = []  # a missing path or an empty folder: reported, the rest done
    for item in args.inputs:
        try:
            listed = list_inputs([item], recursive=args.recursive)
        except FileNotFoundError as e:
            unusable.append((Path(item), str(e).split(": ", 1)[-1]))
            continue
        if not listed:
            unusable.append((Path(item), f"no images in this folder{hint}"))
        for path in listed:
            found.setdefault(path.resolve(), path)
    inputs = sorted(found.values(), key=lambda p: str(p))
    if not inputs:
        if len(unusable) == 1:
            return usage_error(f"{unusable[0][0]}: {unusable[0][1]}")
        return usage_error(f"no images found in {' '.join(args.inputs)}{hint}")
    try:
        predictor = personseg.load(args.model, device=args.device, refine=not args.no_refine, tta=args.tta,
                                   keep=args.keep)
    except (OSError, ValueError) as e:
        return usage_error(f"cannot load the model: {e}")
    if args.threshold is not None:
        predictor.threshold = args.threshold  # --keep largest picks its region at the same threshold
    threshold = predictor.threshold

    outdir = Path(args.output)
    plan = {p: {k: outdir / base.with_name(base.name + OUTPUTS[k]) for k in kinds}
            for p, base in output_bases(inputs).items()}
    originals = {p.resolve() for p in inputs}
    failures: list[tuple[Path, str]] = list(unusable)
    for path, reason in unusable:
        print(f"error: {path}: {reason}", file=sys.stderr)
    bar = tqdm(total=len(inputs), unit="image", file=sys.stderr,
               disable=args.quiet or len(inputs) < 2 or not sys.stderr.isatty())

    def fail(path: Path, reason: str) -> None:
        failures.append((path, reason))
        tqdm.write(f"error: {path}: {reason}", file=sys.stderr)
        bar.update()

    def render_output(kind: str, rgb, alpha):
        return render.output(kind, rgb, alpha, threshold, background)

    try:
        _segment_all(args, inputs, plan, originals, predictor, render_output, fail, bar, write_image_atomic,
                     read_image, ImageReadError)
    except KeyboardInterrupt:
        bar.close()
        print(f"personseg segment: interrupted after {bar.n} of {len(inputs)} images; every image's outputs "
              "are whole, rerun to do the rest (existing outputs are kept unless --overwrite)", file=sys.stderr)
        return 130
    bar.close()

    done = len(inputs) - (len(failures) - len(unusable))
    summary = f"{done} image{'s' if done != 1 else ''} segmented into {outdir}"
    if failures:
        listing = ", ".join(f"{path} ({reason})" for path, reason in failures)
        print(f"{summary}, {len(failures)} failed: {listing}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(summary, file=sys.stderr)
    return 0


def _segment_all(args, inputs, plan, originals, predictor, render_output, fail, bar, write_image_atomic,
                 read_image, ImageReadError) -> None:
    """The batch loop of `run`: read, segment and write each image's outputs (all of them or none)."""
    for start in range(0, len(inputs), args.batch_size):
        batch = []
        for path in inputs[start:start + args.batch_size]:
            outputs = plan[path].values()
            if any(out.resolve() in originals for out in outputs):
                fail(path, "an output would replace an input file; choose another -o folder")
            elif not args.overwrite and any(out.exists() for out in outputs):
                existing = next(out for out in outputs if out.exists())
                fail(path, f"{existing} already exists (use --overwrite to replace it)")
            else:
                try:
                    batch.append((path, read_image(path)))
                except ImageReadError as e:
                    fail(path, e.reason)
        alphas = predictor.predict_batch([rgb for _, rgb in batch], batch_size=args.batch_size)
        for (path, rgb), alpha in zip(batch, alphas):
            created = []  # this image's outputs that did not exist before: removed if it is not finished
            try:
                for kind, out in plan[path].items():
                    existed = out.exists()
                    write_image_atomic(out, render_output(kind, rgb, alpha), overwrite=args.overwrite)
                    if not existed:
                        created.append(out)
            except (OSError, ValueError) as e:
                fail(path, f"cannot write the output: {e}")
                continue
            except BaseException:  # Ctrl-C, SIGTERM: no image is left with only some of its outputs
                for out in created:
                    out.unlink(missing_ok=True)
                raise
            bar.update()
