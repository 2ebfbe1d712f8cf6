"""The `personseg` command. Each subcommand lives in its own module exposing
`add_arguments(parser)` and `run(args) -> int` (the exit code). Only the module of the command being
run is imported, so `personseg segment` and `personseg video` never import torch (the light install
has none) and `personseg --help` stays fast. A command whose module needs a package of the `train`
extra that is missing says so in one line (`TRAIN_EXTRA`) and exits 2."""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS = {
    "segment": ("personseg.segment_cli", "segment images, folders or globs and save masks, cut-outs, overlays"),
    "train": ("personseg.train", "train a model from a YAML recipe (CPU, GPU or torchrun DDP)"),
    "eval": ("personseg.evaluate", "evaluate a checkpoint on data folders: metrics.json, per-image CSV, HTML report"),
    "report": ("personseg.report", "render a run's training curves to PNG"),
    "video": ("personseg.video_cli", "replace or blur a video's background, or write its masks or alpha (audio kept)"),
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


TRAIN_EXTRA = 'pip install "personseg[train]"'


class MissingExtraError(ImportError):
    """Something that needs a package of the `train` extra (torch for .pt checkpoints) without it."""

# top-level packages of the train extra (pyproject.toml); a command importing one that is missing names the extra
TRAIN_PACKAGES = {"torch", "torchvision", "albumentations", "tensorboard", "pycocotools", "yaml", "skimage",
                  "onnx", "onnxscript", "scipy"}


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
