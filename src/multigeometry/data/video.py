"""Video with PyAV (`av`, FFmpeg inside its wheel): encoding clips bit for bit, reading their headers, decoding the
frames a sampler asks for within limits, and the audio track.

- `encode_clip`: RGB frames (and optionally a mono audio track) -> H.264 in MP4 or VP9 in WebM with fixed encoder
  settings, one encoder thread and FFmpeg's bitexact flags, so the same frames give the same bytes on every run;
- `probe`: what the header says (size, frame rate, codec, an audio track), nothing decoded;
- `read_frames`: the frames at chosen indices, (N, H, W, 3) uint8. The frames are counted from the packets first
  (headers can lie), then decoded with `threads` FFmpeg threads: FFmpeg's decoders are bit-exact whatever the number
  of threads, so the frames are the same for any count;
- `segment_indices`: segment-based sampling (TSN): a clip's frames cut into equal segments, one frame from each, its
  centre or (training) a random one;
- `read_audio_track`: the first audio stream's samples, for the audio path.

Errors are `MediaError`s with a quarantine reason (`video_undecodable`, `video_too_large`, `video_frames`, ...) and a
detail naming the file, as the other readers give.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from multigeometry.data.readers import MediaError

# container -> (format name, video encoder, encoder options)
ENCODINGS: dict[str, tuple[str, str, dict[str, str]]] = {
    "mp4": ("mp4", "libx264", {"crf": "18", "preset": "veryfast", "bf": "0", "g": "250"}),
    "webm": ("webm", "libvpx-vp9", {"crf": "30", "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "0",
                                    "lag-in-frames": "0"}),
}
AUDIO_ENCODERS = {"mp4": "aac", "webm": "libopus"}
KEPT_AS_ENCODED = ("mp4", "webm")  # stored in the shards as they come (below shard.max_video_side)
BITEXACT = {"fflags": "+bitexact"}  # no library version strings, deterministic Matroska UIDs


@dataclass(frozen=True)
class VideoInfo:
    """A clip's header: frame size, frame rate, codec, packet count (None until counted) and its audio track."""

    width: int
    height: int
    fps: float
    codec: str
    packets: int | None = None
    audio_rate: int = 0  # 0: no audio track
    audio_channels: int = 0

    @property
    def seconds(self) -> float:
        return (self.packets or 0) / self.fps if self.fps > 0 else math.nan

    @property
    def has_audio(self) -> bool:
        return self.audio_rate > 0


def _open(source: Path | bytes, name: object) -> Any:
    import av

    try:
        return av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source), mode="r")
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise MediaError(name, "video_undecodable", f"{type(e).__name__}: {e}") from e


def _name(source: Path | bytes, name: object) -> object:
    return name if name is not None else source if isinstance(source, Path) else "video"


def video_extension(data: bytes) -> str | None:
    """The extension of an encoded video, from its magic number (MP4/MOV `ftyp`, Matroska/WebM EBML, AVI), or None."""
    head = data[:64]
    if head[4:8] == b"ftyp":
        return "mov" if head[8:10] == b"qt" else "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm" if b"webm" in head else "mkv"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    return None


def probe(source: Path | bytes, name: object = None, count: bool = False) -> VideoInfo:
    """The header of a clip (and with `count` its packets, without decoding). No video stream, or a header FFmpeg
    cannot read, is `video_undecodable`."""
    import av

    name = _name(source, name)
    with _open(source, name) as container:
        if not container.streams.video:
            raise MediaError(name, "video_undecodable", "no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        audio = container.streams.audio[0] if container.streams.audio else None
        packets = None
        if count:
            try:
                packets = sum(1 for p in container.demux(stream) if p.size)
            except (av.error.FFmpegError, OSError, ValueError) as e:
                raise MediaError(name, "video_undecodable", f"{type(e).__name__}: {e}") from e
        return VideoInfo(
            width=int(ctx.width or 0),
            height=int(ctx.height or 0),
            fps=float(rate) if rate else 0.0,
            codec=str(ctx.name),
            packets=packets,
            audio_rate=int(audio.codec_context.sample_rate or 0) if audio is not None else 0,
            audio_channels=int(audio.codec_context.channels or 0) if audio is not None else 0,
        )


def segment_indices(n: int, t: int, draws: Sequence[float] | None = None) -> list[int]:
    """`t` frame indices of a clip of `n` frames, one per equal segment: its centre frame, or with `draws` (t numbers
    in [0, 1)) the frame at that fraction of the segment. Segments shorter than a frame repeat frames (t > n)."""
    if n < 1 or t < 1:
        raise ValueError(f"segment_indices: need n >= 1 and t >= 1, got n={n}, t={t}")
    if draws is not None and len(draws) != t:
        raise ValueError(f"segment_indices: {len(draws)} draws for {t} segments")
    out = []
    for i in range(t):
        start, stop = i * n / t, (i + 1) * n / t
        where = (start + stop) / 2 if draws is None else start + draws[i] * (stop - start)
        out.append(min(n - 1, max(int(math.floor(start)), int(math.floor(where)))))
    return out


def read_frames(
    source: Path | bytes,
    wanted: int | None = None,
    *,
    max_frames: int = 20_000,
    max_pixels: int = 3840 * 2160,
    threads: int = 0,
    name: object = None,
) -> tuple[np.ndarray, VideoInfo]:
    """The clip's frames as RGB uint8 (N, H, W, 3): all of them, or `wanted` at the centres of as many equal segments
    (`segment_indices`), and its header with the packet count. Refuses more than `max_pixels` a frame from the header
    and more than `max_frames` frames from the packet count, before decoding."""
    name = _name(source, name)
    info = probe(source, name, count=True)
    if info.width * info.height > max_pixels:
        raise MediaError(name, "video_too_large", f"{info.width}x{info.height} = {info.width * info.height} pixels a "
                         f"frame > validate.video_max_pixels={max_pixels}")
    if not info.packets:
        raise MediaError(name, "video_no_frames", "the video stream holds no frames")
    if info.packets > max_frames:
        raise MediaError(name, "video_frames", f"{info.packets} frames > validate.video_max_frames={max_frames}")
    picks = (lambda n: list(range(n))) if wanted is None else (lambda n: segment_indices(n, wanted))
    frames, decoded = _decode(source, set(picks(info.packets)), max_frames, threads, name)
    if decoded != info.packets:  # fewer frames than packets (a damaged stream): pick again among those decoded
        frames, decoded = _decode(source, set(picks(decoded)), max_frames, threads, name)
    info = VideoInfo(info.width, info.height, info.fps, info.codec, decoded, info.audio_rate, info.audio_channels)
    return np.stack([frames[i] for i in picks(decoded)]), info


def _decode(source: Path | bytes, keep: set[int], max_frames: int, threads: int,
            name: object) -> tuple[dict[int, np.ndarray], int]:
    """Decode every frame, converting to RGB only those in `keep`: (index -> frame, frames decoded)."""
    import av

    frames: dict[int, np.ndarray] = {}
    decoded = 0
    with _open(source, name) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        try:
            for frame in container.decode(stream):
                if decoded in keep:
                    frames[decoded] = frame.to_ndarray(format="rgb24")
                decoded += 1
                if decoded > max_frames:
                    raise MediaError(name, "video_frames", f"more than validate.video_max_frames={max_frames} frames")
        except av.error.FFmpegError as e:
            raise MediaError(name, "video_undecodable", f"{type(e).__name__}: {e}") from e
    if decoded == 0:
        raise MediaError(name, "video_no_frames", "the video stream decodes to no frame")
    return frames, decoded


def read_audio_track(source: Path | bytes, name: object = None) -> tuple[np.ndarray, int]:
    """The first audio stream of a clip: float32 samples (n, channels) and the rate. `audio_undecodable` when it has
    none or it does not decode."""
    import av

    name = _name(source, name)
    try:
        container = _open(source, name)
    except MediaError as e:
        raise MediaError(name, "audio_undecodable", e.detail) from e
    with container:
        if not container.streams.audio:
            raise MediaError(name, "audio_undecodable", "the file has no audio track")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp")
        chunks: list[np.ndarray] = []
        rate = int(stream.codec_context.sample_rate or 0)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
                    rate = out.sample_rate
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
        except av.error.FFmpegError as e:
            raise MediaError(name, "audio_undecodable", f"{type(e).__name__}: {e}") from e
    if not chunks or rate <= 0:
        raise MediaError(name, "audio_undecodable", "the audio track holds no samples")
    return np.ascontiguousarray(np.concatenate(chunks, axis=1).T, dtype=np.float32), rate


def rgb_to_yuv420p(pixels: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3), even H and W, as yuv420p planes stacked (H * 3 / 2, W): BT.601 limited range in integer
    arithmetic, chroma averaged over 2 x 2 blocks. Done here rather than by libswscale inside the encoder, whose SIMD
    and C paths round differently (which one runs can depend on the buffers' alignment), so that the same frames give
    the same bytes in any process."""
    rgb = pixels.astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    height, width = y.shape

    def chroma(cr: int, cg: int, cb: int) -> np.ndarray:
        full = cr * r + cg * g + cb * b
        blocks = full.reshape(height // 2, 2, width // 2, 2).sum(axis=(1, 3))
        return ((blocks + 512) >> 10) + 128

    u, v = chroma(-38, -74, 112), chroma(112, -94, -18)
    planes = [y.reshape(-1), u.reshape(-1), v.reshape(-1)]
    return np.concatenate(planes).clip(0, 255).astype(np.uint8).reshape(height * 3 // 2, width)


def encode_clip(
    frames: np.ndarray,
    fps: int,
    fmt: str = "mp4",
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
) -> bytes:
    """RGB uint8 frames (N, H, W, 3), even H and W, as H.264 in MP4 (`mp4`) or VP9 in WebM (`webm`), with a mono float
    audio track (AAC, or Opus in WebM) when `audio` is given. Fixed settings, one encoder thread and our own colour
    conversion (`rgb_to_yuv420p`): the same input gives the same bytes."""
    import av

    if fmt not in ENCODINGS:
        raise ValueError(f"encode_clip: unknown format {fmt!r}; allowed: {', '.join(ENCODINGS)}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"encode_clip: expected uint8 frames (N, H, W, 3) with N >= 1, got {frames.dtype} "
                         f"{frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"encode_clip: {width}x{height}: H.264 and VP9 (4:2:0) need an even width and height")
    container_format, codec, options = ENCODINGS[fmt]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container_format, options=dict(BITEXACT)) as container:
        stream = container.add_stream(codec, rate=Fraction(int(fps), 1))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = dict(options)
        sound = None
        if audio is not None:
            rate = 48000 if fmt == "webm" else int(sample_rate)  # Opus runs at 48 kHz
            sound = container.add_stream(AUDIO_ENCODERS[fmt], rate=rate, layout="mono")
            sound.codec_context.thread_count = 1
        for i, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(pixels), format="yuv420p")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if sound is not None:
            wave = np.asarray(audio, dtype=np.float32).reshape(1, -1)
            if fmt == "webm" and sample_rate != 48000:
                from multigeometry.data.world.speech import resample

                wave = resample(wave[0], int(sample_rate), 48000).reshape(1, -1)
            chunk = 1024
            for start in range(0, wave.shape[1], chunk):
                piece = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, start : start + chunk]),
                                                   format="fltp", layout="mono")
                piece.sample_rate = sound.codec_context.sample_rate
                piece.pts = start
                container.mux(sound.encode(piece))
            container.mux(sound.encode(None))
    return buf.getvalue()


def resize_frames(frames: np.ndarray, side: int) -> np.ndarray:
    """Frames scaled (bicubic) so that their longer side is `side`, width and height kept even."""
    from PIL import Image

    height, width = frames.shape[1:3]
    scale = side / max(height, width)
    size = (max(2, 2 * round(width * scale / 2)), max(2, 2 * round(height * scale / 2)))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BICUBIC)) for f in frames])


def video_member(path: Path, max_side: int, limits: dict[str, int], threads: int = 0) -> tuple[str, bytes]:
    """A clip as the shards store it: its bytes as the source encoded them (MP4 or WebM at most `max_side`), else
    re-encoded as H.264 in MP4 at the clip's frame rate (scaled down to `max_side`). `limits`: `max_frames`,
    `max_pixels` (validation's). Decoded first within the limits, as validation decodes it."""
    ext = path.suffix.lower().lstrip(".")
    data = path.read_bytes()
    info = probe(data, path)
    if ext in KEPT_AS_ENCODED and max(info.width, info.height) <= max_side and info.width % 2 == 0 \
            and info.height % 2 == 0:
        return f"video.{ext}", data
    frames, info = read_frames(data, max_frames=limits["max_frames"], max_pixels=limits["max_pixels"],
                               threads=threads, name=path)
    if max(info.width, info.height) > max_side or info.width % 2 or info.height % 2:
        frames = resize_frames(frames, min(max_side, max(info.width, info.height)))
    fps = max(1, round(info.fps)) if info.fps > 0 else 25
    return "video.mp4", encode_clip(frames, fps, "mp4")
