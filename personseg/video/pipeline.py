"""`process_video`: read frames, segment them, keep the masks steady over time, write the result.

Four stages overlap in threads joined by bounded queues, so memory stays constant whatever the length:
decode (`personseg.video.io` sources) -> segment in batches (`personseg.video.tracking`) and a temporal
filter (`personseg.video.temporal`) -> render (`personseg.render`) -> encode (main thread). One output
frame per decoded frame.

Outputs are written under a temporary name beside the final path and renamed at the end. If the input
turns out corrupt or truncated part-way, what was processed is finalized (a valid, playable file or a
folder of whole PNGs) and kept as `NAME.partial.EXT` (`NAME.partial` for folders); the final path is
never written, and a `VideoError` says where the partial output is. Nothing is kept when no frame was
read.
"""
from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import av
import numpy as np

from personseg import render
from personseg.predict import Predictor
from personseg.tempfiles import sigterm_exits
from personseg.video.io import (OUTPUT_EXTENSIONS, BackgroundVideo, CameraSource, Frame, PngFolderWriter,
                                StagedOutput, VideoError, VideoWriter, error_reason, open_source)
from personseg.video.temporal import make_temporal, smooth
from personseg.video.tracking import make_segmenter

def segment_frames(items: Iterable[Frame | Any], segmenter, temporal=None,
                   batch_size: int = 4) -> Iterator[tuple[Frame, np.ndarray] | Any]:
    """`Frame`s in, (frame, alpha) out, in order, `batch_size` frames per model call, through the
    `temporal` filter if any (`make_temporal`); anything else (audio packets) passes straight through.
    If the input raises `VideoError`, the frames read before it are still segmented and yielded, then
    the error is raised."""
    if temporal is not None:
        yield from smooth(segment_frames(items, segmenter, None, batch_size), temporal)
        return
    batch: list[Frame] = []

    def flush() -> Iterator[tuple[Frame, np.ndarray]]:
        alphas = segmenter.predict_batch([f.rgb for f in batch], batch_size=batch_size) if batch else []
        yield from zip(batch, alphas)
        batch.clear()

    try:
        for item in items:
            if isinstance(item, Frame):
                batch.append(item)
                if len(batch) >= batch_size:
                    yield from flush()
            else:
                yield item
    except VideoError:
        yield from flush()
        raise
    finally:
        _close(items)
    yield from flush()


def _close(items: Iterable) -> None:
    """Close a stage's input now (an `_in_thread` generator stops its thread), not whenever the garbage
    collector gets to it: a traceback that holds the generator would keep the decode thread reading a
    container that `process_video` closes (a crash in FFmpeg)."""
    close = getattr(items, "close", None)
    if close is not None:
        close()


def _in_thread(iterable: Iterable, maxsize: int) -> Iterator:
    """Iterate `iterable` in a daemon thread, at most `maxsize` items ahead; its exceptions are raised
    here, after the items produced before them. Leaving the loop early stops the thread."""
    items: queue.Queue = queue.Queue(maxsize)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                items.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def run() -> None:
        iterator = iter(iterable)
        try:
            for item in iterator:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as e:  # handed to the consumer, which re-raises it
            put(("error", e))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "item":
                yield value
            elif kind == "end":
                return
            else:
                raise value
    finally:
        stop.set()
        thread.join(timeout=10)


@dataclass
class VideoSummary:
    frames: int
    seconds: float
    outputs: list[Path] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def output_is_folder(output: Path, output_kind: str) -> bool:
    """An RGBA output kind (cutout) is a .mov file (QuickTime Animation with alpha) or else a folder of PNGs."""
    return render.OUTPUTS[output_kind].rgba and output.suffix.lower() != ".mov"


def check_outputs(output: Path, output_kind: str, save_masks: Path | None, overwrite: bool,
                  source_path: Path | None = None) -> None:
    """Raise ValueError or FileExistsError (with the fix) before any work is done."""
    if output_kind not in render.OUTPUTS:
        raise ValueError(f"output kind {output_kind!r}: choose {', '.join(render.OUTPUTS)}")
    if not output_is_folder(output, output_kind) and output.suffix.lower() not in OUTPUT_EXTENSIONS:
        hint = " (or a folder name for PNGs)" if render.OUTPUTS[output_kind].rgba else ""
        raise ValueError(f"{output}: the output needs a video extension ({', '.join(sorted(OUTPUT_EXTENSIONS))}){hint}")
    folders = {save_masks, output if output_is_folder(output, output_kind) else None} - {None}
    for path in filter(None, [output, save_masks]):
        if source_path is not None:
            src, dst = source_path.resolve(), path.resolve()
            if dst == src or dst in src.parents:
                raise ValueError(f"{path}: writing there would replace the input; choose another path")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists (use --overwrite to replace it)")
        if path.exists() and (path in folders) != path.is_dir():
            raise ValueError(f"{path} exists and is {'not ' if path in folders else ''}a folder; choose another path")
        if path in folders and path.is_dir() and any(p.suffix.lower() != ".png" for p in path.iterdir()):
            # --overwrite replaces the whole folder: only ever one of our PNG outputs
            raise ValueError(f"{path} holds files other than PNGs; --overwrite only replaces a folder of "
                             "PNG frames, choose another folder")
    if save_masks is not None and save_masks.resolve() == output.resolve():
        raise ValueError("--save-masks and -o must be different paths")


def process_video(source: str | Path | int, output: str | Path, predictor: Predictor, *,
                  background: render.Background | BackgroundVideo = "blur", output_kind: str = "background",
                  save_masks: str | Path | None = None, temporal: str = "off", hysteresis: float | None = None,
                  track: bool = False, batch_size: int = 4, threshold: float | None = None, overwrite: bool = False,
                  fps: float | None = None, progress: bool = False, queue_size: int | None = None,
                  save_landmarks: str | Path | None = None, foreground: bool = False) -> VideoSummary:
    """Segment a video (file, folder of frames or camera index) into `output`; see the module doc.

    `output_kind`: a kind of `render.OUTPUTS`, drawn on every frame ("background": the person over
    `background`, the default). RGBA kinds (cutout) go to a .mov (QuickTime Animation) or a folder of PNGs,
    the others to H.264 (mp4/mov/mkv/m4v, audio copied). `save_masks`: a folder for 0/255 PNG masks named by 0-based frame index. `temporal`: off, median
    (`TemporalMedian`), ema or flow (`TemporalFilter`), with `hysteresis` (None: the mode's default).
    `track`: segment a crop around the person (`PersonTracker`). `fps` is the frame rate of folders and
    cameras. `save_landmarks`: a .jsonl file for each frame's skeletons (a multi-task model:
    `LandmarkRecorder`), written when the video is done. `foreground`: the person's own colours at soft
    edges in cutout, compare and background frames (`render.cutout`); off by default here, as Blur-Fusion
    on every frame cost more than the rest of the pipeline (benchmarks/video_cli.py). Raises `VideoError` (bad input, with `partial` set if something was kept),
    ValueError, FileNotFoundError or FileExistsError (bad arguments, nothing written).
    """
    output = Path(output)
    save_masks = Path(save_masks) if save_masks is not None else None
    threshold = predictor.threshold if threshold is None else threshold
    smoother = make_temporal(temporal, threshold, hysteresis)
    segmenter = make_segmenter(predictor, track, threshold, landmarks=save_landmarks is not None)
    if save_landmarks is not None and Path(save_landmarks).exists() and not overwrite:
        raise FileExistsError(f"{save_landmarks} already exists (use --overwrite to replace it)")
    src = open_source(source, fps)
    try:
        check_outputs(output, output_kind, save_masks, overwrite, None if isinstance(src, CameraSource) else src.path)
        with sigterm_exits():  # SIGTERM removes the temporary outputs, as Ctrl-C does
            summary = _run(src, output, output_kind, save_masks, segmenter, smoother, background, threshold,
                           batch_size, overwrite, progress, queue_size or 2 * batch_size, foreground)
            if save_landmarks is not None:
                segmenter.write(save_landmarks)
                summary.outputs.append(Path(save_landmarks))
            return summary
    finally:
        src.close()
        if isinstance(background, BackgroundVideo):
            background.close()


def _run(src, output: Path, output_kind: str, save_masks: Path | None, segmenter, smoother, background,
         threshold: float, batch_size: int, overwrite: bool, progress: bool, queue_size: int,
         foreground: bool = False) -> VideoSummary:
    """The pipeline of `process_video`, once its arguments are checked: stage, stream, finalize."""
    from tqdm import tqdm

    staged, writers = zip(*_outputs(src, output, output_kind, save_masks))

    def pictures(frame: Frame, alpha: np.ndarray) -> list[np.ndarray]:
        """The picture of each writer: the output kind's, then (--save-masks) the mask."""
        back = background.next() if isinstance(background, BackgroundVideo) else background
        made = [render.output(output_kind, frame.rgb, alpha, threshold, back, foreground)]
        return made + [render.mask(alpha, threshold)] if len(writers) > 1 else made

    bar = tqdm(total=src.frames or None, unit="frame", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    segmented = _in_thread(segment_frames(_in_thread(src, queue_size), segmenter, smoother, batch_size), queue_size)
    # Rendering has its own thread: in the main thread it waited behind each encode call, which mostly
    # waits for x264's own threads (a 480p frame on the shared 2-core VM: 17 ms of wall time for 1.4 ms
    # of the caller's CPU). Each stage closes its input when it ends (`_close`), so closing `pipeline`
    # stops every thread before `src` is closed.
    pipeline = _in_thread(_rendered(segmented, pictures), queue_size)
    try:
        try:
            frames, failure = _stream(pipeline, src, writers, bar)
        except (OSError, av.FFmpegError) as e:
            raise VideoError(f"{output}: cannot write the output ({error_reason(e)})") from None
        finally:
            pipeline.close()
            bar.close()
            for writer in writers:
                writer.close()
    except BaseException:
        for s in staged:
            s.discard()
        raise
    seconds = time.perf_counter() - start
    return VideoSummary(frames, seconds, _finalize(staged, src, frames, failure, overwrite))


def _outputs(src, output: Path, output_kind: str, save_masks: Path | None) -> list[tuple[StagedOutput, Any]]:
    """(staged output, its writer) for `output` and, if given, the `save_masks` folder."""
    if output_is_folder(output, output_kind):
        staged = StagedOutput(output, folder=True)
        outputs = [(staged, PngFolderWriter(staged.temp))]
    else:
        staged = StagedOutput(output, folder=False)
        codec = ("qtrle", "argb") if render.OUTPUTS[output_kind].rgba else ("libx264", "yuv420p")
        outputs = [(staged, VideoWriter(staged.temp, *codec, rate=src.rate, audio=src.audio))]
    if save_masks is not None:
        staged = StagedOutput(save_masks, folder=True)
        outputs.append((staged, PngFolderWriter(staged.temp)))
    return outputs


def _rendered(items: Iterable, pictures) -> Iterator:
    """(frame, its writers' pictures) for each (frame, alpha) of `items`; audio packets pass through."""
    try:
        for item in items:
            yield (item[0], pictures(*item)) if isinstance(item, tuple) else item
    finally:
        _close(items)


def _stream(pipeline: Iterator, src, writers, bar) -> tuple[int, VideoError | None]:
    """Write the (frame, pictures) pairs of `pipeline` and copy its audio packets: (frames written, the
    VideoError that stopped the input early or None). Ctrl-C stops a camera, and a file with an error."""
    frames = 0
    try:
        for item in pipeline:
            if not isinstance(item, tuple):
                for writer in writers:
                    writer.mux_audio(item)
                continue
            frame, pictures = item
            for writer, picture in zip(writers, pictures):
                writer.write(picture, frame)
            frames += 1
            bar.update()
    except KeyboardInterrupt:
        if not isinstance(src, CameraSource):
            return frames, VideoError(f"{src.path}: interrupted after {frames} frames")
    except VideoError as e:
        return frames, e
    return frames, None


def _finalize(staged, src, frames: int, failure: VideoError | None, overwrite: bool) -> list[Path]:
    """Rename the complete outputs into place; after a failure keep the partial ones and raise."""
    if failure is not None or frames == 0:
        if frames == 0:
            for s in staged:
                s.discard()
            raise failure or VideoError(f"{src.path}: no frames to read")
        kept = [s.keep_partial() for s in staged]
        raise VideoError(f"{failure}; the {frames} frames before it are in {', '.join(map(str, kept))}",
                         partial=kept[0])
    try:
        return [s.commit(overwrite) for s in staged]
    except FileExistsError:
        for s in staged:
            s.discard()
        raise
