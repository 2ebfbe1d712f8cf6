"""`personseg video` as a user runs it: frames/s end to end, and where each frame's time goes.

    python benchmarks/video_cli.py                       # fast and accurate, 854x480 and 1280x720, 270 frames
    python benchmarks/video_cli.py --models fast --frames 90
    flock /tmp/personseg-cpu.lock python benchmarks/video_cli.py --baseline 12cef64   # old vs new, interleaved

Clips: the DAVIS frames (DATA/video) at each size, --frames of them, as 30 fps H.264 (benchmarks/speed.py's
make_clip, not timed). `python benchmarks/speed.py --end-to-end` times the same pipeline in-process;
this script adds what a user's command costs around it and the stages one by one.

End to end: `personseg video CLIP -o OUT.mp4 --model M --quiet` in a subprocess with every default
(background blur, temporal median, batch 4, ORT threads = the usable cores), wall time from start to
exit, so Python start-up, imports and the model load count as a user feels them; "steady" removes that
start-up (the same command's time on a 1-frame clip). "cpu" is the command's user + system time a frame
(all its threads): on a shared machine, where the command gets what the other jobs leave, it says more
than the wall time. `--baseline REV` runs the same command with the personseg package of git revision
REV, alternating with the working tree's run by run.

Stages, one at a time on the same clip in this process (no overlap): decode (PyAV), segment
(`Predictor.predict_batch`, batches of 4), render (`render.output("background", ..., "blur")`: the blurred
background, as `personseg video` draws it by default; "(--foreground)" the person's own colours that
`--foreground` adds) and encode (libx264 through `personseg.video.io.VideoWriter`). Their sum
against the pipelined end-to-end time shows what the pipeline's threads overlap and what they fight over
on this machine's cores.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from speed import make_clip  # benchmarks/speed.py: the DAVIS frames as a 30 fps H.264 clip

SIZES = {"480p": (854, 480), "720p": (1280, 720)}
REPO = Path(__file__).resolve().parents[1]


def package_at(rev: str, tmp: Path) -> Path:
    """A folder holding the personseg package (weights included) as it was at git revision `rev`."""
    root = tmp / f"personseg-{rev}"
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "personseg"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    return root


def cli_seconds(clip: Path, out: Path, model: str, package: Path = REPO) -> tuple[float, float]:
    """Wall and CPU (user + system, all threads) seconds of `personseg video CLIP -o OUT --model MODEL
    --quiet` (defaults otherwise), with the personseg package found in the folder `package`."""
    command = [sys.executable, "-m", "personseg", "video", str(clip), "-o", str(out), "--model", model,
               "--quiet", "--overwrite"]
    env = {**os.environ, "PYTHONPATH": str(package)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # run from the clip's folder: `-m` puts the working directory first on sys.path, ahead of PYTHONPATH
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=clip.parent, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def stage_ms(clip: Path, model: str, tmp: Path) -> dict[str, float]:
    """ms per frame of each stage alone, on the clip's frames."""
    import personseg
    from personseg import render
    from personseg.video.io import Frame, FileSource, VideoWriter

    start = time.perf_counter()
    source = FileSource(clip)
    frames = [item for item in source if isinstance(item, Frame)]
    source.close()
    n = len(frames)
    times = {"decode": (time.perf_counter() - start) * 1000 / n}
    predictor = personseg.load(model, spinning=False)  # as `personseg video` loads it
    predictor.predict_batch([f.rgb for f in frames[:4]])  # warm-up
    start = time.perf_counter()
    alphas = []
    for i in range(0, n, 4):
        alphas += predictor.predict_batch([f.rgb for f in frames[i:i + 4]], batch_size=4)
    times["segment"] = (time.perf_counter() - start) * 1000 / n
    start = time.perf_counter()
    pictures = [render.output("background", f.rgb, a, predictor.threshold, "blur", foreground=False)
                for f, a in zip(frames, alphas)]  # as `personseg video` renders by default
    times["render"] = (time.perf_counter() - start) * 1000 / n
    start = time.perf_counter()
    for f, a in zip(frames[:20], alphas):
        render.person_colours(f.rgb, a)
    times["(--foreground)"] = (time.perf_counter() - start) * 1000 / min(n, 20)
    writer = VideoWriter(tmp / "stage_encode.mp4")
    start = time.perf_counter()
    for f, picture in zip(frames, pictures):
        writer.write(picture, f)
    writer.close()
    times["encode"] = (time.perf_counter() - start) * 1000 / n
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("PERSONSEG_DATA", "../shared/data"),
                        help="the shared data folder (default: $PERSONSEG_DATA or ../shared/data)")
    parser.add_argument("--models", default="fast,accurate", help="comma-separated (default: fast,accurate)")
    parser.add_argument("--sizes", default="480p,720p", help=f"comma-separated of {', '.join(SIZES)}")
    parser.add_argument("--frames", type=int, default=270, help="frames per clip (default: 270, 9 s at 30 fps)")
    parser.add_argument("--runs", type=int, default=2, help="end-to-end runs per case, median kept (default: 2)")
    parser.add_argument("--baseline", metavar="REV",
                        help="also time the command with the personseg package of this git revision, "
                             "alternating with the working tree's runs")
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not (data / "video").is_dir():
        parser.error(f"{data / 'video'}: no such folder; pass --data (the shared data folder with video/)")
    print(f"# python benchmarks/video_cli.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"# {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} usable cores, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        packages = {"": REPO} | ({f"baseline {args.baseline}: ": package_at(args.baseline, tmp)} if args.baseline else {})
        for label in args.sizes.split(","):
            size = SIZES[label]
            clip = make_clip(data, tmp / f"{label}.mp4", *size, args.frames)
            one = make_clip(data, tmp / f"{label}_1.mp4", *size, 1)
            for model in args.models.split(","):
                runs = {name: [] for name in packages}
                for _ in range(args.runs):  # old, new, old, new, ...: both see the same load
                    for name, package in reversed(packages.items()):
                        runs[name].append(cli_seconds(clip, tmp / "out.mp4", model, package))
                for name, package in reversed(packages.items()):
                    wall, cpu = (statistics.median(r[i] for r in runs[name]) for i in (0, 1))
                    startup = cli_seconds(one, tmp / "out1.mp4", model, package)[0]
                    line = (f"{name}{model} {label} ({size[0]}x{size[1]}), {args.frames} frames: end to end "
                            f"{args.frames / wall:.1f} frames/s ({wall:.2f} s, cpu {cpu * 1000 / args.frames:.1f} "
                            f"ms a frame), steady {(args.frames - 1) / max(wall - startup, 1e-6):.1f} frames/s "
                            f"(start-up {startup:.2f} s)")
                    if package == REPO:
                        stages = stage_ms(clip, model, tmp)
                        serial = sum(v for k, v in stages.items() if not k.startswith("("))
                        line += ("; stages alone, ms a frame: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
                                 + f" (sum {serial:.1f} = {1000 / serial:.1f} frames/s serial)")
                    print(line, flush=True)
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
