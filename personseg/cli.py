"""The `personseg` command. Each subcommand lives in its own module exposing
`add_arguments(parser)` and `run(args) -> int` (the exit code). Only the module of the command being
run is imported, so `personseg segment` and `personseg video` never import torch (the light install
has none) and `personseg --help` stays fast. A command whose module needs a package of the `train`
extra that is missing says so in one line (`TRAIN_EXTRA`) and exits 2."""
from __future__ import annotations

import argparse
import importlib
import sys

from personseg.extras import TRAIN_EXTRA, TRAIN_PACKAGES, MissingExtraError

# name -> (module, one-line help)
COMMANDS = {
    "segment": ("personseg.segment_cli", "segment images, folders or globs and save masks, cut-outs, overlays"),
    "train": ("personseg.train", "train a model from a YAML recipe (CPU, GPU or torchrun DDP)"),
    "eval": ("personseg.evaluate", "evaluate a checkpoint on data folders: metrics.json, per-image CSV, HTML report"),
    "report": ("personseg.report", "render a run's training curves to PNG"),
    "video": ("personseg.video_cli", "replace or blur a video's background, or write its masks, alpha or cut-out (audio kept)"),
    "data": ("personseg.data_tools", "download public person datasets and check data folders"),
    "export": ("personseg.export", "export a model to ONNX (dynamic sizes, parity-checked), optionally int8"),
    "bench": ("personseg.bench", "parameters, GFLOPs, latency and throughput of models on PyTorch and ONNX Runtime"),
    "serve": ("personseg.serve", "an HTTP API (FastAPI): POST an image, get its mask, alpha, cut-out or new background"),
    "demo": ("personseg.demo", "try a model in the browser (Gradio): photos, webcam and short videos"),
    "batch": ("personseg.batch_ray", "personseg segment on Ray Data, for large collections or a Ray cluster"),
}


def threshold(value: str) -> float:
    """argparse type: a probability threshold in [0, 1]."""
    t = float(value)
    if not 0.0 <= t <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1")
    return t


def pixel_size(value: str) -> tuple[int, int]:
    """argparse type: "WIDTHxHEIGHT", each 16 to 16384 pixels -> (width, height)."""
    try:
        width, height = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected WIDTHxHEIGHT such as 384x216") from None
    if not (16 <= width <= 16384 and 16 <= height <= 16384):
        raise argparse.ArgumentTypeError(f"{value!r}: width and height must each be 16 to 16384 pixels")
    return width, height


def positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return n


def nonnegative_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return n


def save_kinds(value: str) -> list[str]:
    """argparse type: comma-separated output kinds of `render.OUTPUTS` or "all" (every one of them);
    `parts` and `landmarks` (a multi-task model's heads) each add their companion picture."""
    from personseg.render import HEAD_GROUPS, HEAD_OUTPUTS, OUTPUTS

    kinds = [k.strip().lower() for k in value.split(",") if k.strip()]
    if kinds == ["all"]:
        return list(OUTPUTS)
    unknown = [k for k in kinds if k not in OUTPUTS and k not in HEAD_OUTPUTS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown output {', '.join(unknown) or value!r}; "
                                         f"choose from {', '.join(OUTPUTS)}, all, or with --model parts: "
                                         f"{', '.join(HEAD_GROUPS)}")
    return [k for kind in kinds for k in HEAD_GROUPS.get(kind, (kind,))]


def add_predictor_arguments(parser: argparse.ArgumentParser, *, default_model: str | None = None,
                            model_note: str = "", default_device: str = "auto", default_tta: bool | None = None,
                            device: bool = True) -> None:
    """The options that choose and set up the model, as `load_predictor(args)` reads them: --model,
    --device (unless `device` is False), --threshold, --no-refine, --tta and --keep."""
    from personseg.predict import DEFAULT_MODEL, DEVICES, KEEP
    from personseg.refiner import REFINE

    parser.add_argument("--model", default=default_model, metavar="PATH_OR_NAME",
                        help="a checkpoint or .onnx file, or a shipped model name (accurate, fast)"
                             f"{model_note} (default: {default_model or DEFAULT_MODEL})")
    if device:
        parser.add_argument("--device", choices=DEVICES, default=default_device,
                            help=f"where to run the model; auto picks cuda when a GPU is available "
                                 f"(default: {default_device})")
    parser.add_argument("--threshold", type=threshold, metavar="T",
                        help="alpha at or above which a pixel is person, for masks, overlays and --keep "
                             "(default: the model's own, usually 0.5)")
    parser.add_argument("--no-refine", action="store_true",
                        help="upsample the model's output bilinearly instead of with the edge-aware guided "
                             "filter (faster, softer edges); the same as --refine none")
    parser.add_argument("--refine", choices=REFINE, default="auto",
                        help="how the model's low-resolution output reaches the photo's size: deep (the trained "
                             "guided filter shipped with the model), guided (the analytic one), none "
                             "(bilinear); auto: guided (the trained one measured worse IoU: MODEL_CARD.md, Edges) "
                             "(default: auto)")
    own = "the model's own setting: off for the shipped models (it did not pay: MODEL_CARD.md) and your checkpoints"
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=default_tta,
                        help="also run the model on the mirror image and average: a little more accurate, "
                             f"twice the model's time (default: {own if default_tta is None else ('on' if default_tta else 'off')})")
    parser.add_argument("--keep", choices=KEEP, default="all",
                        help="all: every person found; largest: only the largest connected person region, "
                             "for one-person cut-outs of photos with bystanders (default: all)")
    parser.add_argument("--min-peak", type=threshold, metavar="P",
                        help="drop each person region (pixels of probability >= 0.3 joined together) whose "
                             "highest probability is under P, so cats, statues and cups are not half person; "
                             "0.95 took accurate from 6.4%% to 4.9%% of a person-free photo called person "
                             "(benchmarks/region_filter.py) (default: off)")
    parser.add_argument("--presence-cut", type=threshold, metavar="P",
                        help="for a model with a presence head (accurate, parts): an empty mask for a photo "
                             "whose probability of holding anyone is under P; 0 turns it off (default: the "
                             "model's own, 0.02 for accurate: MODEL_CARD.md, Presence head)")


def min_peak_filter(level: float):
    """The region filter of --min-peak: regions of probability >= 0.3 whose peak is under `level` go."""
    from personseg.regions import RegionFilter

    return RegionFilter(level=level, support=0.3)


def load_predictor(args: argparse.Namespace, **options):
    """`personseg.load` with the options of `add_predictor_arguments`; `options` (spinning=False, ...)
    go to it as they are."""
    import personseg

    refine = "none" if args.no_refine else getattr(args, "refine", "auto")
    if getattr(args, "min_peak", None) is not None:
        options.setdefault("regions", min_peak_filter(args.min_peak))
    return personseg.load(args.model, device=getattr(args, "device", "cpu"), refine=refine, tta=args.tta,
                          keep=args.keep, threshold=args.threshold, presence=args.presence_cut, **options)


def has_extra(command: str, module: str, needs: str, extra: str) -> bool:
    """Whether `module` imports; if not, the one-line install hint on stderr (the caller exits 2)."""
    import importlib

    try:
        importlib.import_module(module)
    except ModuleNotFoundError:
        print(f'personseg {command}: needs {needs}: pip install "personseg[{extra}]"', file=sys.stderr)
        return False
    return True


def warn_if_public(host: str, what: str) -> None:
    """A warning on stderr when a server binds beyond this machine (no authentication)."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {host}: {what} is reachable from other machines, with no authentication",
              file=sys.stderr)


def missing_extra_message(command: str, package: str) -> str:
    return f"personseg {command}: needs {package}, which the light install leaves out: {TRAIN_EXTRA}"


def build_parser(commands: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; full arguments only for `commands` (default: all), whose modules are imported."""
    parser = argparse.ArgumentParser(
        prog="personseg",
        description="Find the people in images and video, pixel by pixel.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        if commands is not None and name not in commands:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:  # ModuleNotFoundError, or an ImportError of a blocked or broken package
            top = (e.name or "").split(".")[0]
            if e.name != module_name and top not in TRAIN_PACKAGES:
                raise
            sub_parser.set_defaults(_missing=top if top in TRAIN_PACKAGES else "")
            sub_parser.add_argument("_rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            continue
        module.add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser([command] if command in COMMANDS else [])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    missing = getattr(args, "_missing", None)
    if missing is not None:
        message = (missing_extra_message(args.command, missing) if missing
                   else f"personseg {args.command}: not available in this build")
        print(message, file=sys.stderr)
        return 2
    from personseg.imageio import max_pixels

    try:
        max_pixels()  # a bad $PERSONSEG_MAX_PIXELS: one line for every command, before any work
    except ValueError as e:
        print(f"personseg {args.command}: {e}", file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except MissingExtraError as e:  # a .pt checkpoint without torch, say
        print(f"personseg {args.command}: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # a lazy import of the train extra on the way: --example's scikit-image...
        top = (e.name or "").split(".")[0]
        if top not in TRAIN_PACKAGES:
            raise
        print(missing_extra_message(args.command, top), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
