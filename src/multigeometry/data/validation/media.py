"""Per-row media checks that a manifest suite cannot do: files decode, and have sane sizes, rates and durations.

Each check returns None when the item is good, or `(reason, detail)` when it is not.
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

from multigeometry.config import ValidateConfig

log = logging.getLogger(__name__)

Failure = tuple[str, str]


def resolve_media(root: Path, relative: str) -> Path | None:
    """The file a manifest path names, or None when it escapes the dataset folder."""
    root = root.resolve()
    path = (root / relative).resolve()
    return path if path.is_relative_to(root) else None


def check_image(path: Path, cfg: ValidateConfig) -> Failure | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            width, height = image.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        return "image_undecodable", f"{type(e).__name__}: {e}"
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


def check_audio(path: Path, cfg: ValidateConfig) -> Failure | None:
    import soundfile as sf

    try:
        if _wav_truncated(path):
            return "audio_undecodable", "WAV file is shorter than its header says (truncated)"
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as e:
        return "audio_undecodable", f"{type(e).__name__}: {e}"
    if cfg.audio_sample_rates and rate not in cfg.audio_sample_rates:
        return "audio_sample_rate", f"{rate} Hz not in validate.audio_sample_rates {list(cfg.audio_sample_rates)}"
    if rate < cfg.audio_min_sample_rate:
        return "audio_sample_rate", f"{rate} Hz below validate.audio_min_sample_rate {cfg.audio_min_sample_rate}"
    seconds = samples.shape[0] / rate
    if not cfg.audio_min_seconds <= seconds <= cfg.audio_max_seconds:
        return "audio_duration", (f"{seconds:.3f} s not in [validate.audio_min_seconds, validate.audio_max_seconds] = "
                                  f"[{cfg.audio_min_seconds}, {cfg.audio_max_seconds}]")
    rms = float(np.sqrt(np.mean(np.square(samples)))) if samples.size else 0.0
    if rms < cfg.audio_min_rms:
        return "audio_silent", f"RMS {rms:.2e} < validate.audio_min_rms {cfg.audio_min_rms:.2e}"
    return None


def check_code(path: Path, cfg: ValidateConfig) -> Failure | None:
    try:
        source = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        return "code_undecodable", f"{type(e).__name__}: {e}"
    if not source.strip():
        return "code_empty", "file is empty"
    try:
        ast.parse(source, filename=str(path))
    except SyntaxError as e:
        return "code_syntax_error", f"line {e.lineno}: {e.msg}"
    return None


def check_text(text: str, cfg: ValidateConfig) -> Failure | None:
    if not text.strip():
        return "text_empty", "caption is empty or whitespace"
    return None


FILE_CHECKS: dict[str, Callable[[Path, ValidateConfig], Failure | None]] = {
    "image": check_image,
    "audio": check_audio,
    "code": check_code,
}


def media_failures(frame: pd.DataFrame, root: Path, cfg: ValidateConfig) -> dict[object, list[Failure]]:
    """Every failing media item of `frame`, by row index. Missing files are the manifest suite's to report."""
    failures: dict[object, list[Failure]] = {}
    rows = frame.to_dict("index")
    for index, row in tqdm(rows.items(), total=len(rows), desc="media checks", unit="row", disable=None):
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
            if failure := check(path, cfg):
                found.append(failure)
        if found:
            failures[index] = found
    return failures
