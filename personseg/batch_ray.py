"""`personseg batch`: `personseg segment` for collections larger than one machine's patience, on Ray Data.

    pip install "personseg[ray]"
    personseg batch photos/ -o out --recursive --workers 8            # a local Ray on this machine
    personseg batch --manifest list.txt -o /shared/out --address auto  # an existing Ray cluster

One Ray Data pipeline: the images still to do -> `map_batches(Segmenter)` on an actor pool, each actor
loading the predictor once and writing its outputs itself. Outputs are the files `personseg segment`
writes, byte for byte (same names, same `render` calls, same `write_image_atomic`): written under a
temporary name and renamed, so a crash never leaves half a file, and a rerun skips every output already
there (--overwrite redoes them). On a cluster, inputs and OUTDIR must be on storage every node sees, and
personseg must be installed on the nodes.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from personseg.cli import add_predictor_arguments, positive_int, save_kinds
from personseg.render import OUTPUTS
from personseg.segment_cli import DEFAULT_SAVE, output_plan


class Segmenter:
    """The Ray actor: one predictor per worker; `__call__` segments a batch of rows {"path", "outputs"}
    (outputs: "kind=path" lines) and returns {"path", "error"} ("" when done)."""

    def __init__(self, model: str | None, refine: bool, tta: bool | None, keep: str, threshold: float | None,
                 background: str, batch_size: int, overwrite: bool, presence: float | None = None,
                 min_peak: float | None = None):
        import personseg
        from personseg import render

        from personseg.cli import min_peak_filter

        regions = min_peak_filter(min_peak) if min_peak is not None else None
        self.predictor = personseg.load(model, device="cpu", refine=refine, tta=tta, keep=keep, threshold=threshold,
                                        presence=presence, regions=regions)
        self.background = render.parse_background(background) if background else None
        self.batch_size, self.overwrite = batch_size, overwrite

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from personseg import render
        from personseg.imageio import ImageReadError, read_image, write_image_atomic

        paths, errors, todo = [str(p) for p in batch["path"]], [], []
        for i, path in enumerate(paths):
            try:
                todo.append((i, read_image(path)))
                errors.append("")
            except ImageReadError as e:
                errors.append(e.reason)
        alphas = self.predictor.predict_batch([rgb for _, rgb in todo], batch_size=self.batch_size)
        for (i, rgb), alpha in zip(todo, alphas):
            outputs = dict(line.split("=", 1) for line in str(batch["outputs"][i]).splitlines())
            try:
                for kind, out in outputs.items():
                    if self.overwrite or not Path(out).exists():
                        image = render.output(kind, rgb, alpha, self.predictor.threshold, self.background)
                        write_image_atomic(out, image, overwrite=self.overwrite)
            except (OSError, ValueError) as e:
                errors[i] = f"cannot write the output: {e}"
        return {"path": np.array(paths, dtype=object), "error": np.array(errors, dtype=object)}


def run_batch(inputs: list[str], outdir: str | Path, *, kinds: list[str] | None = None, model: str | None = None,
              refine: bool = True, tta: bool | None = None, keep: str = "all", threshold: float | None = None,
              background: str = "blur", batch_size: int = 4, workers: int = 2, recursive: bool = False,
              overwrite: bool = False, address: str | None = None,
              presence: float | None = None, min_peak: float | None = None) -> tuple[int, int, list[tuple[str, str]]]:
    """Segment `inputs` (files, folders, globs) into `outdir` on Ray. Returns (done, skipped, failures):
    images segmented now, images whose outputs were all there already, and (path, reason) pairs.
    `address` None starts a local Ray with `workers` CPUs unless one is running or RAY_ADDRESS is set;
    "auto" or "ray://host:10001" joins a cluster."""
    import ray

    from personseg import render
    from personseg.imageio import list_inputs

    kinds = kinds or list(DEFAULT_SAVE)
    if "background" in kinds:
        render.parse_background(background)  # a bad value fails here, not on every worker
    outdir = Path(outdir)
    jobs = output_plan(list_inputs(inputs, recursive=recursive), outdir, kinds)
    originals = {p.resolve() for p in jobs}
    failures = [(str(p), "an output would replace an input file; choose another -o folder")
                for p, outs in jobs.items() if any(o.resolve() in originals for o in outs.values())]
    bad = {Path(p) for p, _ in failures}
    rows = [{"path": str(p.resolve()), "outputs": "\n".join(f"{k}={o.resolve()}" for k, o in outs.items())}
            for p, outs in jobs.items()
            if p not in bad and (overwrite or not all(o.exists() for o in outs.values()))]
    skipped = len(jobs) - len(rows) - len(failures)
    if not rows:
        return 0, skipped, failures

    started_here = not ray.is_initialized()
    if started_here:
        options = {"include_dashboard": False, "log_to_driver": False}
        if address is None and "RAY_ADDRESS" not in os.environ:
            options["num_cpus"] = workers
        ray.init(address=address, **options)
    try:
        dataset = ray.data.from_items(rows).map_batches(
            Segmenter, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
            fn_constructor_kwargs={"model": model, "refine": refine, "tta": tta, "keep": keep,
                                   "threshold": threshold, "background": background if "background" in kinds else "",
                                   "batch_size": batch_size, "overwrite": overwrite, "presence": presence,
                                   "min_peak": min_peak})
        results = list(dataset.iter_rows())
    finally:
        if started_here:
            ray.shutdown()
    failures += [(r["path"], r["error"]) for r in results if r["error"]]
    return len(results) - sum(1 for r in results if r["error"]), skipped, failures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (__doc__.split("\n\n")[0] + " Outputs, names and options as `personseg segment`.")
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument("--manifest", metavar="FILE", help="a text file of image paths, one a line (# comments)")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the outputs")
    parser.add_argument("--save", type=save_kinds, action="append", metavar="KINDS",
                        help=f"{', '.join(OUTPUTS)} or all (default: {','.join(DEFAULT_SAVE)})")
    parser.add_argument("--background", default="blur", metavar="BG", help="for --save background (default: blur)")
    add_predictor_arguments(parser, device=False)  # each actor runs its model on one CPU
    parser.add_argument("--batch-size", type=positive_int, default=4, metavar="N", help="images per model call (default: 4)")
    parser.add_argument("--workers", type=positive_int, default=2, metavar="N",
                        help="actors, one predictor and one CPU each (default: 2)")
    parser.add_argument("--address", metavar="ADDR",
                        help="an existing Ray cluster: auto, or ray://HEAD:10001 (default: $RAY_ADDRESS, "
                             "else a local Ray with --workers CPUs)")
    parser.add_argument("--recursive", action="store_true", help="also look in subfolders of folder inputs")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that exist (default: skip them)")


def run(args: argparse.Namespace) -> int:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ModuleNotFoundError:
        print('personseg batch: needs Ray Data: pip install "personseg[ray]"', file=sys.stderr)
        return 2
    inputs = list(args.inputs)
    if args.manifest:
        lines = Path(args.manifest).read_text().splitlines()
        inputs += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not inputs:
        print("personseg batch: give at least one INPUT or --manifest", file=sys.stderr)
        return 2
    kinds = list(dict.fromkeys(k for group in args.save or [DEFAULT_SAVE] for k in group))
    try:
        done, skipped, failures = run_batch(
            inputs, args.output, kinds=kinds, model=args.model, refine=not args.no_refine, tta=args.tta,
            keep=args.keep, threshold=args.threshold, background=args.background, batch_size=args.batch_size,
            workers=args.workers, recursive=args.recursive, overwrite=args.overwrite, address=args.address,
            presence=args.presence_cut, min_peak=args.min_peak)
    except (FileNotFoundError, ValueError) as e:
        print(f"personseg batch: {e}", file=sys.stderr)
        return 2
    for path, reason in failures:
        print(f"error: {path}: {reason}", file=sys.stderr)
    print(f"{done} image{'s' if done != 1 else ''} segmented into {args.output}, {skipped} already done"
          + (f", {len(failures)} failed" if failures else ""), file=sys.stderr)
    return 1 if failures else 0
