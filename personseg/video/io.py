"""Video in and out: sources that decode frames (files, folders of images, cameras), background videos,
and writers that encode them (H.264 or QuickTime Animation files, PNG folders), staged under a
temporary name.

* Frames are segmented upright. A file's display matrix (phone videos) is read per frame; frames are
  turned by its multiple of 90 degrees (`upright`), and writers turn them back (`stored`) and give the
  output stream the same rotation, so players show it as they showed the input. Mirror flags and angles
  that are not multiples of 90 degrees are not preserved. PNG outputs are upright.
* Timing: every output frame keeps its input frame's pts, time base and duration (variable frame rate
  survives; the encoder's time base is the input stream's).
* Audio: the first audio stream's packets are copied unchanged (no re-encoding). PNG folders carry none.
* H.264 needs even sizes (yuv420p); an odd width or height is padded by one edge-copied pixel.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import av
import cv2
import numpy as np

from personseg import render
from personseg.tempfiles import remove_stale, temp_path

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".m4v", ".avi", ".webm"}  # read (inputs, backgrounds)
OUTPUT_EXTENSIONS = {".mp4", ".mov", ".mkv", ".m4v"}  # written: containers that take H.264 and qtrle
DEFAULT_FPS = 30
# H.264 for people to watch: near-transparent quality, a preset fast enough not to slow the pipeline.
H264_OPTIONS = {"crf": "18", "preset": "veryfast"}


class VideoError(Exception):
    """An input that cannot be read (corrupt, truncated, not a video) or an output that cannot be written.
    The message is one line; `partial` is the path of what was kept, if anything."""

    def __init__(self, message: str, partial: Path | None = None):
        super().__init__(message)
        self.partial = partial


# --------------------------------------------------------------------------------------------- reading

@dataclass
class Frame:
    """One decoded frame. `rgb` is (H, W, 3) uint8, upright; `rotation` the counter-clockwise degrees
    (a multiple of 90) the stored picture was turned by to get it; `pts` and `duration` count `time_base`."""
    index: int
    rgb: np.ndarray
    pts: int
    time_base: Fraction
    duration: int | None = None
    rotation: int = 0


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a stored picture counter-clockwise by `rotation` degrees (a multiple of 90)."""
    return np.ascontiguousarray(np.rot90(image, rotation // 90)) if rotation % 360 else image


def stored(image: np.ndarray, rotation: int) -> np.ndarray:
    """The inverse of `upright`: back to the orientation the file stores."""
    return np.ascontiguousarray(np.rot90(image, -(rotation // 90))) if rotation % 360 else image


def error_reason(error: Exception) -> str:
    """A PyAV error as a short phrase ('Invalid data found when processing input')."""
    return getattr(error, "strerror", None) or str(error).splitlines()[0]


class FileSource:
    """A video file, decoded with PyAV. Iterating yields `Frame`s and the first audio stream's packets
    (av.Packet, to be copied), in file order. Raises `VideoError` on corrupt or truncated data, after
    yielding everything before it. `close()` when done: the output's audio stream is set up from the
    input's, which must stay open until then."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.container = av.open(str(self.path))
        except av.FFmpegError as e:
            raise VideoError(f"{self.path}: not a readable video ({error_reason(e)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoError(f"{self.path}: has no video stream")
        self.video = self.container.streams.video[0]
        self.video.thread_type = "AUTO"
        self.audio = self.container.streams.audio[0] if self.container.streams.audio else None
        self.rate = self.video.guessed_rate or self.video.average_rate or Fraction(DEFAULT_FPS)
        self.frames = self.video.frames  # from the header; 0 when the container does not say

    def __iter__(self) -> Iterator[Frame | Any]:
        index = packets = 0
        streams = [s for s in (self.video, self.audio) if s is not None]
        try:
            for packet in self.container.demux(*streams):
                if packet.stream is self.audio:
                    if packet.size and packet.dts is not None:  # the demuxer ends each stream with an empty packet
                        yield packet
                    continue
                packets += bool(packet.size)
                for frame in packet.decode():
                    yield self._frame(frame, index)
                    index += 1
        except av.FFmpegError as e:
            raise VideoError(f"{self.path}: corrupt or truncated video, unreadable after {index} frames "
                             f"({error_reason(e)})") from None
        if self.frames and packets < self.frames:
            # the decoded count, not `packets`: it is the number of frames the partial output holds
            raise VideoError(f"{self.path}: truncated video, it ends after {index} of the {self.frames} "
                             "frames its header announces")

    def close(self) -> None:
        self.container.close()

    def _frame(self, frame, index: int) -> Frame:
        rotation = round((frame.rotation or 0) / 90) % 4 * 90
        time_base = frame.time_base or self.video.time_base
        pts = frame.pts if frame.pts is not None else round(index / self.rate / time_base)
        return Frame(index, upright(frame.to_ndarray(format="rgb24"), rotation), pts, time_base,
                     frame.duration or None, rotation)


class FolderSource:
    """A folder of images, sorted by name, at `fps` frames per second (the first `limit` only, if given).
    Every image must have the size of the first."""

    def __init__(self, folder: str | Path, fps: float = DEFAULT_FPS, limit: int | None = None):
        from personseg.imageio import list_inputs

        self.path = Path(folder)
        self.files = list_inputs([str(self.path)])[:limit]
        if not self.files:
            raise VideoError(f"{self.path}: no image files in this folder")
        self.rate = Fraction(fps).limit_denominator(1001)
        self.frames = len(self.files)
        self.audio = None

    def __iter__(self) -> Iterator[Frame]:
        from personseg.imageio import ImageReadError, read_image

        size = None
        for index, path in enumerate(self.files):
            try:
                rgb = read_image(path)
            except ImageReadError as e:
                raise VideoError(f"{e.path}: frame {index}: {e.reason}") from None
            if size is not None and rgb.shape != size:
                raise VideoError(f"{path}: frame {index} is {rgb.shape[1]}x{rgb.shape[0]}, the first frame "
                                 f"{size[1]}x{size[0]}; every frame of a folder must have the same size")
            size = rgb.shape
            yield Frame(index, rgb, index, 1 / self.rate, 1)

    def close(self) -> None:
        pass


class CameraSource:
    """An OpenCV camera (VideoCapture index) until it stops or Ctrl-C; pts are capture times in ms."""

    def __init__(self, index: int, fps: float | None = None):
        self.capture = cv2.VideoCapture(index)
        if not self.capture.isOpened():
            raise VideoError(f"camera {index}: cannot be opened (is it connected and free?)")
        self.path = Path(f"camera{index}")
        self.rate = Fraction(fps or self.capture.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS).limit_denominator(1001)
        self.frames = 0
        self.audio = None
        self.stop = threading.Event()

    def __iter__(self) -> Iterator[Frame]:
        start, index = time.perf_counter(), 0
        try:
            while not self.stop.is_set():
                ok, bgr = self.capture.read()
                if not ok:
                    break
                pts = round((time.perf_counter() - start) * 1000)
                yield Frame(index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), pts, Fraction(1, 1000))
                index += 1
        finally:
            self.capture.release()

    def close(self) -> None:
        self.stop.set()
        self.capture.release()


def open_source(source: str | Path | int, fps: float | None = None) -> FileSource | FolderSource | CameraSource:
    """A video file, a folder of frames, or a camera (an int, or a string of digits). Raises
    FileNotFoundError for a missing path, VideoError for one that is not a readable video."""
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit() and not Path(source).exists()):
        return CameraSource(int(source), fps)
    path = Path(source)
    if path.is_dir():
        return FolderSource(path, fps or DEFAULT_FPS)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return FileSource(path)


class BackgroundVideo:
    """A background video's frames, upright, looped as long as needed (decoded on demand, not stored)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._source: FileSource | None = None
        self._frames: Iterator[Frame] | None = None
        FileSource(self.path).close()  # fail early on an unreadable file

    def next(self) -> np.ndarray:
        for _ in range(2):
            if self._frames is None:
                self._source = FileSource(self.path)
                self._frames = (item for item in self._source if isinstance(item, Frame))
            frame = next(self._frames, None)
            if frame is not None:
                return frame.rgb
            self.close()  # the end: loop
        raise VideoError(f"{self.path}: the background video has no frames")

    def close(self) -> None:
        if self._source is not None:
            self._frames = None
            self._source.close()
            self._source = None


def parse_background(value: str) -> render.Background | BackgroundVideo:
    """`render.parse_background` plus video files (by extension), which play behind the person, looped."""
    if Path(value).suffix.lower() in VIDEO_EXTENSIONS and Path(value).is_file():
        return BackgroundVideo(value)
    return render.parse_background(value)


# ------------------------------------------------------------------------------------------ writing

class StagedOutput:
    """An output file or folder written under a temporary name beside `path`, renamed into place at the end."""

    def __init__(self, path: Path, folder: bool):
        self.path, self.folder = path, folder
        # keep the extension: FFmpeg picks the container format from it
        self.temp = temp_path(path, path.stem, path.suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path, path.stem, path.suffix)  # left by a killed run
        if folder:
            self.temp.mkdir()

    def partial_path(self, n: int = 1) -> Path:
        """NAME.partial.EXT, or NAME.partial-N.EXT (N >= 2) when that name is taken."""
        tag = "partial" if n == 1 else f"partial-{n}"
        return self.path.with_name(f"{self.path.stem}.{tag}{self.path.suffix}")

    def commit(self, overwrite: bool) -> Path:
        return self._move(self.path, overwrite)

    def keep_partial(self) -> Path:
        """Keep what was written under the first free partial name: an existing path (the input, an
        earlier partial, a user's folder) is never replaced, since this run did not create it."""
        for n in range(1, 1000):
            target = self.partial_path(n)
            try:
                if self.folder:
                    target.mkdir()  # claims the name atomically; fails if anything is there
                    os.replace(self.temp, target)  # onto our own empty folder
                else:
                    try:
                        os.link(self.temp, target)  # fails if anything is there; never replaces
                        self.temp.unlink()
                    except FileExistsError:
                        raise
                    except OSError:  # no hard links on this file system (FAT, some mounts)
                        if target.exists() or target.is_symlink():
                            raise FileExistsError(target) from None
                        os.replace(self.temp, target)
                return target
            except FileExistsError:
                continue
        raise VideoError(f"{self.partial_path()}: 999 partial outputs exist already; remove some")

    def _move(self, target: Path, overwrite: bool) -> Path:
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} already exists (use --overwrite to replace it)")
        if self.folder and target.is_dir():
            old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(target, old)
            os.replace(self.temp, target)
            shutil.rmtree(old)
        else:
            os.replace(self.temp, target)
        return target

    def discard(self) -> None:
        if self.folder:
            shutil.rmtree(self.temp, ignore_errors=True)
        else:
            self.temp.unlink(missing_ok=True)


class VideoWriter:
    """Encode frames into a video file with PyAV, copying audio packets from `audio` (an input stream).

    Opens on the first frame (its size, rotation and time base set up the stream; audio packets that come
    earlier wait). `write(image, frame)` takes the upright (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA picture and
    the input `Frame` whose timing and rotation it keeps."""

    def __init__(self, path: Path, codec: str = "libx264", pix_fmt: str = "yuv420p",
                 options: dict | None = None, rate: Fraction | None = None, audio=None):
        self.path, self.codec, self.pix_fmt = path, codec, pix_fmt
        self.options = dict(H264_OPTIONS if options is None and codec == "libx264" else options or {})
        self.rate, self.audio = rate or Fraction(DEFAULT_FPS), audio
        self.container = self.stream = self.audio_out = None
        self.waiting_audio: list = []
        self.frames = 0

    def _open(self, height: int, width: int, frame: Frame) -> None:
        self.container = av.open(str(self.path), "w")
        try:
            stream = self.container.add_stream(self.codec, rate=self.rate, options=self.options)
            stream.width, stream.height, stream.pix_fmt = width, height, self.pix_fmt
            stream.time_base = stream.codec_context.time_base = frame.time_base
            if frame.rotation:
                stream.set_display_rotation(frame.rotation)
            self.stream = stream
            if self.audio is not None:
                self.audio_out = self.container.add_stream_from_template(self.audio)
        except (av.FFmpegError, ValueError) as e:
            raise VideoError(f"{self.path}: cannot set up the output ({error_reason(e)}); "
                             "try a .mkv or .mov output") from None

    def write(self, image: np.ndarray, frame: Frame) -> None:
        if image.ndim == 2:  # a gray picture (mask, alpha): as RGB, which H.264 takes
            image = np.repeat(image[..., None], 3, axis=2)
        image = stored(image, frame.rotation)
        if self.pix_fmt == "yuv420p" and (image.shape[0] % 2 or image.shape[1] % 2):
            image = cv2.copyMakeBorder(image, 0, image.shape[0] % 2, 0, image.shape[1] % 2, cv2.BORDER_REPLICATE)
        if self.container is None:
            self._open(image.shape[0], image.shape[1], frame)
            for packet in self.waiting_audio:
                self.mux_audio(packet)
            self.waiting_audio.clear()
        video_frame = av.VideoFrame.from_ndarray(image, format="rgba" if image.shape[2] == 4 else "rgb24")
        video_frame.pts, video_frame.time_base = frame.pts, frame.time_base
        if frame.duration:
            video_frame.duration = frame.duration
        self.container.mux(self.stream.encode(video_frame))
        self.frames += 1

    def mux_audio(self, packet) -> None:
        if self.container is None:
            self.waiting_audio.append(packet)
        elif self.audio_out is not None:
            packet.stream = self.audio_out
            self.container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and write the trailer: the file is complete and playable."""
        if self.container is not None:
            try:
                self.container.mux(self.stream.encode(None))
            finally:
                self.container.close()
                self.container = None


class PngFolderWriter:
    """Write each frame as FOLDER/NNNNN.png (the 0-based frame index, five digits)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.frames = 0

    def write(self, image: np.ndarray, frame: Frame) -> None:
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR)
        path = self.folder / f"{frame.index:05d}.png"
        if not cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
            raise OSError(f"{path}: cannot write the PNG (disk full or no permission?)")
        self.frames += 1

    def mux_audio(self, packet) -> None:
        pass  # a folder of images has no audio

    def close(self) -> None:
        pass
