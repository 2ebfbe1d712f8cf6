"""Video: read frames, segment them, keep the masks steady over time, write the result.

    from personseg.video import process_video
    process_video("talk.mp4", "talk_blur.mp4", personseg.load("fast"))

The parts, in the order a frame meets them:

* `personseg.video.io`: sources (`FileSource`, `FolderSource`, `CameraSource`, `open_source`), looped
  background videos, and the writers (`VideoWriter`, `PngFolderWriter`); rotation, timing and audio.
* `personseg.video.tracking`: what segments the frames (the predictor, a `PersonTracker`, or a
  `RecurrentSegmenter` over `Predictor.step`).
* `personseg.video.temporal`: `TemporalMedian` and `TemporalFilter`, steadying the masks over time.
* `personseg.video.pipeline`: `process_video`, its four stages in threads, and partial outputs.

No torch: this runs on the light install. The clip metrics (`video_metrics`) are in personseg.metrics.
"""
from personseg.video.io import (DEFAULT_FPS, OUTPUT_EXTENSIONS, VIDEO_EXTENSIONS, BackgroundVideo, CameraSource,
                                FileSource, FolderSource, Frame, PngFolderWriter, VideoError, VideoWriter,
                                open_source, parse_background)
from personseg.video.pipeline import VideoSummary, check_outputs, process_video, segment_frames
from personseg.video.temporal import TEMPORAL_MODES, TemporalFilter, TemporalMedian, make_temporal, smooth
from personseg.video.tracking import PersonTracker, RecurrentSegmenter, make_segmenter

__all__ = ["DEFAULT_FPS", "OUTPUT_EXTENSIONS", "TEMPORAL_MODES", "VIDEO_EXTENSIONS",
           "BackgroundVideo", "CameraSource", "FileSource", "FolderSource", "Frame", "PersonTracker",
           "PngFolderWriter", "RecurrentSegmenter", "TemporalFilter", "TemporalMedian", "VideoError",
           "VideoSummary", "VideoWriter", "check_outputs", "make_segmenter", "make_temporal", "open_source",
           "parse_background", "process_video", "segment_frames", "smooth"]
