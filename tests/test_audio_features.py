"""Audio decoding (soundfile, mono, resampling, crop/pad) and Whisper-style log-mel features."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from multigeometry.config import AudioConfig
from multigeometry.data.audio import AudioDecodeError, load_audio, log_mel


def _speechlike(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Tones with a slow amplitude envelope, some noise and a stretch of silence: a varied spectrum."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    wave += 0.1 * np.sin(2 * np.pi * 1800 * t + 0.5) + 0.02 * rng.standard_normal(t.size)
    wave[: rate // 4] = 0.0
    return wave.astype(np.float32)


def _whisper_reference(wave: np.ndarray, pad_to_30s: bool) -> np.ndarray:
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor()  # Whisper's defaults, built locally: no download
    padding = "max_length" if pad_to_30s else "longest"
    return fe(wave, sampling_rate=16000, padding=padding, return_tensors="np").input_features[0]


@pytest.mark.parametrize("seconds", [0.7, 3.3])
def test_log_mel_matches_whisper_feature_extractor_unpadded(seconds: float) -> None:
    wave = _speechlike(seconds)
    ours = log_mel(wave, AudioConfig())
    ref = _whisper_reference(wave, pad_to_30s=False)
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape == (80, len(wave) // 160)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    assert ours.std() > 0.1  # not a constant: the comparison means something


def test_log_mel_matches_whisper_feature_extractor_on_30s() -> None:
    wave = np.pad(_speechlike(4.0, seed=1), (0, 16000 * 26))
    ours = log_mel(wave, AudioConfig())
    ref = _whisper_reference(wave, pad_to_30s=True)
    assert ours.shape == ref.shape == (80, 3000)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("changes", "expected_mels", "hop"),
    [({"n_mels": 40}, 40, 160), ({"hop_ms": 20.0}, 80, 320), ({"n_mels": 128, "win_ms": 50.0}, 128, 160)],
)
def test_log_mel_shape_follows_params(changes: dict, expected_mels: int, hop: int) -> None:
    wave = _speechlike(1.234)
    cfg = dataclasses.replace(AudioConfig(), **changes)
    feats = log_mel(wave, cfg)
    assert feats.shape == (expected_mels, len(wave) // hop)
    assert np.isfinite(feats).all()


def test_log_mel_dynamic_range_and_scale() -> None:
    feats = log_mel(_speechlike(2.0), AudioConfig())
    # log10 clamped to 8 below the maximum, then (x + 4) / 4: the spread is at most 2
    assert feats.max() - feats.min() <= 2.0 + 1e-6
    silence = log_mel(np.zeros(8000, dtype=np.float32), AudioConfig())
    np.testing.assert_allclose(silence, (np.log10(1e-10) + 4) / 4)


def test_log_mel_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shorter than one analysis window"):
        log_mel(np.zeros(100, dtype=np.float32), AudioConfig())
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((2, 16000), dtype=np.float32), AudioConfig())


def _write(path: Path, data: np.ndarray, rate: int) -> Path:
    sf.write(str(path), data, rate)
    return path


def test_load_audio_mixes_to_mono_and_resamples(tmp_path: Path) -> None:
    rate = 22050
    t = np.arange(int(1.5 * rate)) / rate
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    path = _write(tmp_path / "stereo.flac", stereo, rate)
    wave = load_audio(path, AudioConfig(max_seconds=10.0))
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - round(1.5 * 16000)) <= 1
    spectrum = np.abs(np.fft.rfft(wave))
    peak_hz = np.argmax(spectrum) * 16000 / len(wave)
    assert abs(peak_hz - 440) < 2  # the tone survives resampling
    assert 0.2 < np.abs(wave[1000:-1000]).max() < 0.3  # the mean of the channels: half the left amplitude


def test_load_audio_crop_start_and_center(tmp_path: Path) -> None:
    ramp = np.linspace(-0.9, 0.9, 3 * 16000, dtype=np.float32)
    path = _write(tmp_path / "ramp.wav", ramp, 16000)
    start = load_audio(path, AudioConfig(max_seconds=1.0, crop="start"))
    center = load_audio(path, AudioConfig(max_seconds=1.0, crop="center"))
    assert len(start) == len(center) == 16000
    np.testing.assert_allclose(start, ramp[:16000], atol=1e-4)  # 16-bit WAV
    np.testing.assert_allclose(center, ramp[16000:32000], atol=1e-4)


def test_load_audio_crop_with_resampling_is_exact_length(tmp_path: Path) -> None:
    path = _write(tmp_path / "long.wav", _speechlike(3.0, rate=48000), 48000)
    for crop in ("start", "center"):
        wave = load_audio(path, AudioConfig(max_seconds=1.25, crop=crop))
        assert len(wave) == 20000


def test_load_audio_pads_with_zeros_only_when_asked(tmp_path: Path) -> None:
    path = _write(tmp_path / "short.wav", _speechlike(0.5) + 0.1, 16000)
    padded = load_audio(path, AudioConfig(max_seconds=1.0, pad="zeros"))
    unpadded = load_audio(path, AudioConfig(max_seconds=1.0, pad="none"))
    assert len(padded) == 16000 and len(unpadded) == 8000
    np.testing.assert_array_equal(padded[:8000], unpadded)
    assert not padded[8000:].any() and unpadded[-100:].any()


def test_load_audio_errors_name_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioDecodeError, match="garbage.wav"):
        load_audio(garbage, AudioConfig())
    with pytest.raises(AudioDecodeError, match="missing.flac.*not found"):
        load_audio(tmp_path / "missing.flac", AudioConfig())
    empty = _write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioDecodeError, match="empty.wav.*no samples"):
        load_audio(empty, AudioConfig())
