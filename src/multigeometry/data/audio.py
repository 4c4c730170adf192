"""Audio decoding and log-mel features.

`load_audio` decodes a file with soundfile (``torchaudio.load`` needs torchcodec), or a video's audio track with PyAV
(an MP4, WebM, ... in the `audio` column: `is_container`), mixes it down to mono, resamples
it with torchaudio to ``audio.sample_rate`` and crops or pads it as the params say. `log_mel` computes the log-mel
spectrogram with Whisper's conventions, so that with the default params (16 kHz, 80 mels, 25 ms window, 10 ms hop,
0-8000 Hz) it equals what `transformers.WhisperFeatureExtractor` computes on the same unpadded waveform:

- an STFT with ``n_fft`` = the window (400 samples), a periodic Hann window, centred frames with reflect padding;
- the power spectrum (power 2) through a mel filter bank with the Slaney mel scale and Slaney (area) normalisation;
- the last frame dropped, so that ``n`` samples give ``n // hop`` frames (3000 frames for 30 s);
- ``log10(max(x, 1e-10))``, clamped to 8 (80 dB) below the clip's maximum, then ``(x + 4) / 4``.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import numpy as np
import torch

from multigeometry.config import AudioConfig

log = logging.getLogger(__name__)

LOG_FLOOR = 1e-10  # Whisper clamps the mel power at this value before log10
DYNAMIC_RANGE = 8.0  # log10 units (80 dB) kept below the maximum


class AudioDecodeError(ValueError):
    """An audio file that cannot be read or holds no samples."""


def window_samples(cfg: AudioConfig) -> int:
    """The analysis window (and FFT size) in samples."""
    return max(1, round(cfg.win_ms * cfg.sample_rate / 1000.0))


def hop_samples(cfg: AudioConfig) -> int:
    """The hop between frames in samples."""
    return max(1, round(cfg.hop_ms * cfg.sample_rate / 1000.0))


def max_samples(cfg: AudioConfig) -> int:
    """The longest waveform `load_audio` returns, in samples at ``cfg.sample_rate``."""
    return max(1, round(cfg.max_seconds * cfg.sample_rate))


def n_frames(n_samples: int, cfg: AudioConfig) -> int:
    """The number of log-mel frames `log_mel` gives for a waveform of ``n_samples``."""
    return n_samples // hop_samples(cfg)


def _crop_start(total: int, keep: int, crop: str) -> int:
    if total <= keep:
        return 0
    return (total - keep) // 2 if crop == "center" else 0


def load_audio(path: Path, cfg: AudioConfig) -> np.ndarray:
    """Decode ``path`` to a float32 mono waveform at ``cfg.sample_rate``, cropped/padded as ``cfg`` says.

    Only the part of the file that survives the crop (``cfg.max_seconds``, from the start or around the centre) is
    read. With ``cfg.pad == "zeros"`` a shorter clip is zero-padded at the end to exactly ``cfg.max_seconds``.
    Raises `AudioDecodeError` naming the file when it cannot be decoded or holds no samples.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"{path}: audio file not found")
    if is_container(path):
        data, src_rate = read_container_audio(path)
        keep_src = math.ceil(cfg.max_seconds * src_rate)
        start = _crop_start(data.shape[0], keep_src, cfg.crop)
        data, read_rate = data[start : start + keep_src + 64], src_rate
    else:
        data, src_rate, read_rate = _read_soundfile(path, cfg)
    if data.size == 0:
        raise AudioDecodeError(f"{path}: the audio holds no samples")
    if read_rate != src_rate:  # pragma: no cover - soundfile reports the same rate twice
        src_rate = int(read_rate)
    wave = data.mean(axis=1, dtype=np.float32)
    if not np.all(np.isfinite(wave)):
        raise AudioDecodeError(f"{path}: the audio holds NaN or infinite samples")
    if src_rate != cfg.sample_rate:
        import torchaudio.functional as AF

        wave = AF.resample(torch.from_numpy(wave), orig_freq=src_rate, new_freq=cfg.sample_rate).numpy()
    wave = np.ascontiguousarray(wave[: max_samples(cfg)], dtype=np.float32)
    if cfg.pad == "zeros" and wave.shape[0] < max_samples(cfg):
        wave = np.pad(wave, (0, max_samples(cfg) - wave.shape[0]))
    return wave


CONTAINER_SUFFIXES = frozenset({".mp4", ".m4a", ".webm", ".mkv", ".mov", ".m4v", ".avi", ".aac"})


def is_container(path: Path) -> bool:
    """A file whose audio is a track of a container (a video's soundtrack), read with PyAV rather than soundfile."""
    return Path(path).suffix.lower() in CONTAINER_SUFFIXES


def read_container_audio(path: Path) -> tuple[np.ndarray, int]:
    """The audio track of a container (an MP4's AAC, a WebM's Opus): float32 (n, channels) and the rate."""
    from multigeometry.data.readers import MediaError
    from multigeometry.data.video import read_audio_track

    try:
        return read_audio_track(Path(path), path)
    except MediaError as e:
        raise AudioDecodeError(f"{path}: cannot decode audio ({e.detail})") from e


def audio_seconds(path: Path) -> float:
    """The duration of an audio file (or of a clip's audio track) in seconds, from its header where it has one."""
    import soundfile as sf

    if is_container(path):
        data, rate = read_container_audio(path)
        return data.shape[0] / rate
    return float(sf.info(str(path)).duration)


def _read_soundfile(path: Path, cfg: AudioConfig) -> tuple[np.ndarray, int, int]:
    import soundfile as sf

    try:
        info = sf.info(str(path))
        src_rate = int(info.samplerate)
        total = int(info.frames)
        # Read a little more than needed at the source rate, so resampling has no edge effect at the crop's end.
        keep_src = math.ceil(cfg.max_seconds * src_rate)
        start = _crop_start(total, keep_src, cfg.crop)
        stop = min(total, start + keep_src + 64) if total > 0 else None
        data, read_rate = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError, ValueError) as e:
        raise AudioDecodeError(f"{path}: cannot decode audio ({type(e).__name__}: {e})") from e
    return data, src_rate, int(read_rate)


@functools.lru_cache(maxsize=8)
def _mel_transform(sample_rate: int, n_fft: int, hop: int, n_mels: int, f_min: float, f_max: float) -> torch.nn.Module:
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate,
        n_fft=n_fft,
        win_length=n_fft,
        hop_length=hop,
        f_min=f_min,
        f_max=f_max,
        n_mels=n_mels,
        window_fn=torch.hann_window,
        power=2.0,
        center=True,
        pad_mode="reflect",
        norm="slaney",
        mel_scale="slaney",
    )


def log_mel(wave: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """Whisper-style log-mel features of a mono waveform at ``cfg.sample_rate``: float32 ``[n_mels, n // hop]``."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"log_mel: expected a mono waveform (1-D array), got shape {wave.shape}")
    n_fft, hop = window_samples(cfg), hop_samples(cfg)
    if wave.shape[0] < n_fft:
        raise ValueError(
            f"log_mel: a waveform of {wave.shape[0]} samples is shorter than one analysis window "
            f"({n_fft} samples = {cfg.win_ms:g} ms at {cfg.sample_rate} Hz)"
        )
    transform = _mel_transform(cfg.sample_rate, n_fft, hop, cfg.n_mels, float(cfg.f_min), float(cfg.f_max))
    with torch.inference_mode():
        mel = transform(torch.from_numpy(wave))[:, :-1]
        logm = torch.clamp(mel, min=LOG_FLOOR).log10()
        logm = torch.maximum(logm, logm.max() - DYNAMIC_RANGE)
        logm = (logm + 4.0) / 4.0
    return logm.numpy().astype(np.float32, copy=False)
