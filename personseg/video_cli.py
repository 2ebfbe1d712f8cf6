"""`personseg video`: replace or blur the background of a video, or write its masks, alpha or cut-out.

A thin caller of `personseg.video.process_video`: decode, segment, render and encode overlap in
threads; memory stays constant whatever the length of the video.
"""
from __future__ import annotations

import argparse
import sys

from personseg.cli import add_predictor_arguments, load_predictor, positive_int

VIDEO_MODEL = "fast"  # the real-time preset: its frames/s are measured by benchmarks/video.py
OLD_KINDS = {"composite": "background", "masks": "mask"}  # --output-kind names before render.OUTPUTS

EPILOG = """\
INPUT is a video file, a folder of frames (images sorted by name, at --fps) or a camera index (0, 1, ...;
stop with Ctrl-C).

outputs (--output-kind, drawn on every frame):
{kinds}
OUTPUT is an H.264 video (libx264, yuv420p; .mp4, .mov, .mkv or .m4v), audio copied; for cutout, a .mov
(QuickTime Animation, qtrle, with transparency) or else a folder of RGBA PNGs OUTPUT/00000.png, ... (no
audio). --save-masks DIR also writes DIR/00000.png, ...: 8-bit masks, 255 = person, named by 0-based
frame index. The earlier names composite and masks still work, for background and mask.

Video outputs keep every frame and its timestamp (variable frame rate included), the rotation flag of
phone videos (multiples of 90 degrees; frames are segmented upright) and the first audio stream, copied
unchanged. PNGs are upright. Outputs are written under a temporary name and renamed when complete;
existing outputs are kept unless --overwrite (which replaces a whole --save-masks folder).

A corrupt or truncated input stops the run with a one-line error; the frames processed before the damage
are finalized into valid files named NAME.partial.mp4 (NAME.partial for folders) and OUTPUT itself is
not written. Nothing is kept when no frame could be read.

exit status: 0 done; 1 the input could not be read (corrupt, truncated, not a video) or the output
could not be written; 2 bad arguments, an existing output without --overwrite, or the model could not
be loaded.

examples:
  personseg video talk.mp4 -o talk_blur.mp4
  personseg video talk.mp4 -o talk_green.mp4 --background "#00b140" --temporal flow
  personseg video talk.mp4 -o beach.mp4 --background beach.jpg --track
  personseg video frames/ -o cutout/ --output-kind cutout --fps 25
  personseg video talk.mp4 -o talk_masks.mp4 --output-kind mask --save-masks masks/
  personseg video 0 -o webcam.mp4 --background office.mp4
"""


def _fps(value: str) -> float:
    fps = float(value)
    if not 0 < fps <= 1000:
        raise argparse.ArgumentTypeError(f"{value} is not a frame rate between 0 and 1000")
    return fps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from personseg.render import OUTPUTS
    from personseg.video import TEMPORAL_MODES

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG.format(kinds="".join(f"  {kind:12}{o.about}\n" for kind, o in OUTPUTS.items()))
    parser.add_argument("input", metavar="INPUT", help="a video file, a folder of frames or a camera index")
    parser.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                        help="the output video (.mp4, .mov, .mkv), or a folder for --output-kind cutout")
    parser.add_argument("--background", default="blur", metavar="BG",
                        help="behind the person: blur (the video's own background, blurred), a colour "
                             "(white, black, green, blue, red, gray, #RRGGBB or R,G,B), an image file "
                             "(resized to cover) or a video file (looped) (default: blur)")
    parser.add_argument("--output-kind", choices=[*OUTPUTS, *OLD_KINDS], default="background", metavar="KIND",
                        help=f"what OUTPUT shows: {', '.join(OUTPUTS)} (default: background; see below)")
    parser.add_argument("--foreground", action=argparse.BooleanOptionalAction, default=False,
                        help="estimate the person's own colours at soft edges (Blur-Fusion), so no rim of the "
                             "old background shows on the new one, as `segment` does for photos; it costs more "
                             "than the rest of the pipeline per frame (benchmarks/video_cli.py) (default: off)")
    parser.add_argument("--save-masks", metavar="DIR", help="also write 0/255 PNG masks DIR/00000.png, ...")
    parser.add_argument("--save-landmarks", metavar="FILE.jsonl",
                        help="with --model parts: also write each frame's skeletons, one JSON line a frame "
                             "({frame, people: COCO keypoint results}), smoothed from frame to frame")
    parser.add_argument("--temporal", choices=TEMPORAL_MODES, default="median",
                        help="steady the masks over time: median (of each frame and its neighbours: "
                             "blinks of a frame are gone, lasting changes come through on time; one "
                             "frame of delay), ema (motion-aware smoothing of the past frames: no delay, "
                             "for cameras), flow (ema after warping the previous mask by optical flow; "
                             "slower) or off (default: median; measured in benchmarks/video.py)")
    parser.add_argument("--hysteresis", type=float, metavar="M",
                        help="with --temporal: a person pixel stays person until its probability falls M "
                             "below the threshold, a background pixel needs M above it to turn; stops "
                             "pixels near the threshold blinking (default: 0.05 for median, 0.2 for "
                             "ema and flow; 0 = off)")
    parser.add_argument("--track", action="store_true",
                        help="segment a crop around the person found in the previous frames (more detail "
                             "for small people; the full frame is searched again every 30 frames)")
    parser.add_argument("--fps", type=_fps, metavar="FPS",
                        help="frame rate of a folder of frames or a camera (default: 30, or the camera's)")
    add_predictor_arguments(parser, default_model=VIDEO_MODEL, default_tta=False,
                            model_note="; recurrent checkpoints carry their state from frame to frame; "
                                       "fast is the real-time preset, images default to accurate")
    parser.add_argument("--batch-size", type=positive_int, default=4, metavar="N",
                        help="frames run through the model together (default: 4)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")


def run(args: argparse.Namespace) -> int:
    from personseg.video import VideoError, parse_background, process_video

    def fail(message: str, code: int) -> int:
        print(f"personseg video: {message}", file=sys.stderr)
        return code

    try:
        background = parse_background(args.background)
    except (ValueError, VideoError) as e:
        return fail(f"--background: {e}", 2)
    try:
        # ORT's workers do not spin-wait here: decoding, the guided filter and x264 need the same cores
        predictor = load_predictor(args, spinning=False)
    except (OSError, ValueError) as e:
        return fail(f"cannot load the model: {e}", 2)
    try:
        summary = process_video(
            args.input, args.output, predictor, background=background,
            output_kind=OLD_KINDS.get(args.output_kind, args.output_kind), save_masks=args.save_masks,
            temporal=args.temporal, hysteresis=args.hysteresis, track=args.track, batch_size=args.batch_size,
            overwrite=args.overwrite, fps=args.fps, save_landmarks=args.save_landmarks,
            progress=not args.quiet and sys.stderr.isatty(), foreground=args.foreground)
    except VideoError as e:
        return fail(str(e), 1)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        return fail(str(e), 2)
    if not args.quiet:
        print(f"{summary.frames} frames in {summary.seconds:.1f} s ({summary.fps:.1f} frames/s) -> "
              f"{', '.join(map(str, summary.outputs))}", file=sys.stderr)
    return 0
