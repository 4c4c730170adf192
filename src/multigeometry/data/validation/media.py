"""Per-row media checks that a manifest suite cannot do: files decode, and have sane sizes, rates and durations.

Each check returns None when the item is good, or `(reason, detail)` when it is not. Files are decoded by the same
functions the shard stage uses (`data.readers`, `data.audio.load_audio`) within the same limits, so a row that passes
is a row the shard stage can read; anything else a check raises quarantines the row (`media_check_error`) instead of
stopping the stage.
"""

from __future__ import annotations

import ast
import logging
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from multigeometry.config import AudioConfig, ValidateConfig, VideoConfig
from multigeometry.data.readers import MediaError, read_code, read_image

log = logging.getLogger(__name__)

Failure = tuple[str, str]


def resolve_media(root: Path, relative: str) -> Path | None:
    """The file a manifest path names, or None when it escapes the dataset folder or is no valid path."""
    root = root.resolve()
    try:
        path = (root / relative).resolve()
    except (OSError, ValueError):  # e.g. an embedded NUL byte
        return None
    return path if path.is_relative_to(root) else None


def check_image(path: Path, cfg: ValidateConfig, audio: AudioConfig | None = None) -> Failure | None:
    try:
        with read_image(path, cfg.image_max_pixels) as image:
            width, height = image.size
    except MediaError as e:
        return e.reason, e.detail
    if min(width, height) < cfg.image_min_side:
        return "image_too_small", f"{width}x{height} < validate.image_min_side {cfg.image_min_side} px"
    return None


def _wav_truncated(path: Path) -> bool:
    """libsndfile reads a cut-off WAV without complaint; its RIFF header still says how long it should be."""
    with path.open("rb") as f:
        header = f.read(12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return False
    (riff_size,) = struct.unpack("<I", header[4:8])
    return path.stat().st_size < riff_size + 8


def check_audio(path: Path, cfg: ValidateConfig, audio: AudioConfig | None = None) -> Failure | None:
    import soundfile as sf

    from multigeometry.data.audio import AudioDecodeError, is_container, load_audio, read_container_audio

    try:
        if _wav_truncated(path):
            return "audio_undecodable", "WAV file is shorter than its header says (truncated)"
        if is_container(path):  # a video's audio track, decoded with PyAV as the shard stage decodes it
            samples, rate = read_container_audio(path)
        else:
            samples, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, AudioDecodeError, RuntimeError, OSError, TypeError) as e:
        return "audio_undecodable", f"{type(e).__name__}: {e}"
    if cfg.audio_sample_rates and rate not in cfg.audio_sample_rates:
        return "audio_sample_rate", f"{rate} Hz not in validate.audio_sample_rates {list(cfg.audio_sample_rates)}"
    if rate < cfg.audio_min_sample_rate:
        return "audio_sample_rate", f"{rate} Hz below validate.audio_min_sample_rate {cfg.audio_min_sample_rate}"
    if not np.all(np.isfinite(samples)):
        return "audio_undecodable", "the audio holds NaN or infinite samples"
    seconds = samples.shape[0] / rate
    if not cfg.audio_min_seconds <= seconds <= cfg.audio_max_seconds:
        return "audio_duration", (f"{seconds:.3f} s not in [validate.audio_min_seconds, validate.audio_max_seconds] = "
                                  f"[{cfg.audio_min_seconds}, {cfg.audio_max_seconds}]")
    rms = float(np.sqrt(np.mean(np.square(samples)))) if samples.size else 0.0
    if rms < cfg.audio_min_rms:
        return "audio_silent", f"RMS {rms:.2e} < validate.audio_min_rms {cfg.audio_min_rms:.2e}"
    try:  # decoded as the shard stage decodes it (mono, resampled, cropped)
        load_audio(path, audio or AudioConfig())
    except (AudioDecodeError, ValueError) as e:
        return "audio_undecodable", f"{type(e).__name__}: {e}"
    return None


def check_code(path: Path, cfg: ValidateConfig, audio: AudioConfig | None = None) -> Failure | None:
    try:
        source = read_code(path, cfg.code_max_bytes)
    except MediaError as e:
        return e.reason, e.detail
    if not source.strip():
        return "code_empty", "file is empty"
    try:
        ast.parse(source, filename=str(path))
    except SyntaxError as e:
        return "code_syntax_error", f"line {e.lineno}: {e.msg}"
    except ValueError as e:  # e.g. a NUL byte
        return "code_syntax_error", str(e)
    except (MemoryError, RecursionError) as e:  # the parser's own limits: nesting too deep for it
        return "code_too_complex", f"the Python parser gave up ({type(e).__name__}: nesting too deep)"
    return None


def check_video(path: Path, cfg: ValidateConfig, audio: AudioConfig | None = None,
                video: VideoConfig | None = None) -> Failure | None:
    """Decodes every frame (within `validate.video_max_frames` and `video_max_pixels`, refused from the header and
    the packet count first) with the shard stage's reader; then the frame count, size, rate and duration."""
    from multigeometry.data.video import read_frames

    size = path.stat().st_size
    if size > cfg.video_max_bytes:
        return "video_too_large", f"{size} bytes > validate.video_max_bytes={cfg.video_max_bytes}"
    try:
        _frames, info = read_frames(path, 1, max_frames=cfg.video_max_frames, max_pixels=cfg.video_max_pixels,
                                    threads=(video or VideoConfig()).threads)
    except MediaError as e:
        return e.reason, e.detail
    frames = info.packets or 0
    if frames < cfg.video_min_frames:
        return "video_frames", f"{frames} frames < validate.video_min_frames {cfg.video_min_frames}"
    if min(info.width, info.height) < cfg.video_min_side:
        return "video_too_small", f"{info.width}x{info.height} < validate.video_min_side {cfg.video_min_side} px"
    if not cfg.video_min_fps <= info.fps <= cfg.video_max_fps:
        return "video_frame_rate", (f"{info.fps:g} frames/s not in [validate.video_min_fps, validate.video_max_fps] "
                                    f"= [{cfg.video_min_fps:g}, {cfg.video_max_fps:g}]")
    if not cfg.video_min_seconds <= info.seconds <= cfg.video_max_seconds:
        return "video_duration", (f"{info.seconds:.3f} s ({frames} frames at {info.fps:g}/s) not in "
                                  f"[validate.video_min_seconds, validate.video_max_seconds] = "
                                  f"[{cfg.video_min_seconds:g}, {cfg.video_max_seconds:g}]")
    return None


def check_text(text: str, cfg: ValidateConfig) -> Failure | None:
    if not text.strip():
        return "text_empty", "caption is empty or whitespace"
    return None


FILE_CHECKS: dict[str, Callable[..., Failure | None]] = {
    "image": check_image,
    "audio": check_audio,
    "code": check_code,
    "video": check_video,
}


def _row_failures(row: dict, root: Path, cfg: ValidateConfig, audio: AudioConfig | None) -> list[Failure]:
    found: list[Failure] = []
    text = row.get("text")
    if isinstance(text, str) and (failure := check_text(text, cfg)):
        found.append(failure)
    for modality, check in FILE_CHECKS.items():
        relative = row.get(modality)
        if not isinstance(relative, str):
            continue
        path = resolve_media(root, relative)
        if path is None or not path.is_file():
            continue
        try:
            failure = check(path, cfg, audio)
        except Exception as e:  # one bad file never stops the stage: it is this row's reason
            failure = "media_check_error", f"{modality} {relative}: {type(e).__name__}: {e}"
        if failure:
            found.append(failure)
    return found


def media_failures(frame: pd.DataFrame, root: Path, cfg: ValidateConfig,
                   audio: AudioConfig | None = None) -> dict[object, list[Failure]]:
    """Every failing media item of `frame`, by row index. Missing files are the manifest suite's to report. Audio is
    also decoded as the shard stage decodes it with `audio` (default: the default audio params)."""
    failures: dict[object, list[Failure]] = {}
    rows = frame.to_dict("index")
    for index, row in tqdm(rows.items(), total=len(rows), desc="media checks", unit="row", disable=None):
        if found := _row_failures(row, root, cfg, audio):
            failures[index] = found
    return failures
