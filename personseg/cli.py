"""The `personseg` command. Each subcommand lives in its own module exposing
`add_arguments(parser)` and `run(args) -> int` (the exit code); they are imported lazily so
`personseg --help` stays fast."""
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="personseg",
        description="Find the people in images and video, pixel by pixel.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            sub_parser.set_defaults(_missing=True)
            continue
        module.add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        print(f"personseg {args.command}: not available in this build", file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
