"""Writing media files into a staging folder, shared by the sources.

Every source puts its media under `staging/<modality>/<stem>.<ext>` and stores that path, relative to the staging
folder, in the manifest. Encoded media are written as they come (the bytes of a JPEG stay those bytes); only what
has no encoding yet (a decoded array, a PIL image without its file) is encoded here.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

# PIL format name -> file extension
IMAGE_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


def media_stem(key: str) -> str:
    """A file-name stem for `key`: the key itself when it is safe, else a cleaned form plus a short hash of the key.

    Two different keys never get the same stem (the hash tells apart keys that clean to the same text).
    """
    cleaned = _UNSAFE.sub("_", key).strip("._")[:100]
    if cleaned == key and key:
        return key
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return f"{cleaned}-{digest}" if cleaned else digest


def media_path(modality: str, stem: str, ext: str) -> str:
    """The manifest path (relative, POSIX) of a media file."""
    return f"{modality}/{stem}.{ext.lstrip('.').lower()}"


def write_media(staging: Path, modality: str, stem: str, data: bytes, ext: str) -> str:
    """Write `data` to `staging/<modality>/<stem>.<ext>`; return that path relative to `staging`."""
    relative = media_path(modality, stem, ext)
    target = staging / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return relative


def copy_media(staging: Path, modality: str, stem: str, source: Path, ext: str | None = None) -> str:
    """Copy the file `source` to `staging/<modality>/<stem>.<ext>` (ext defaults to the source's own suffix)."""
    ext = ext or source.suffix.lstrip(".") or "bin"
    relative = media_path(modality, stem, ext)
    target = staging / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return relative


def image_extension(data: bytes) -> str | None:
    """The extension of an encoded image, from its header (PIL reads the header only), or None if unknown."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    if fmt is None:
        return None
    return IMAGE_EXTENSIONS.get(fmt, fmt.lower())


def audio_extension(data: bytes) -> str | None:
    """The extension of an encoded audio file, from its magic number, or None if unknown."""
    head = data[:12]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


def audio_from_video(rows: list[Any], staging: Path) -> int:
    """Rows with a clip and no audio take the clip's audio track as their audio (the `audio` column names the clip;
    the audio path reads its track with PyAV) when it has one. A clip that does not open is left to validation.
    Returns the number of rows that got one."""
    from multigeometry.data.readers import MediaError
    from multigeometry.data.video import probe

    given = 0
    for row in rows:
        if row.video and not row.audio and (staging / row.video).is_file():
            try:
                has_audio = probe(staging / row.video).has_audio
            except MediaError:
                continue
            if has_audio:
                row.audio = row.video
                given += 1
    return given


def encode_image(image: Any) -> bytes:
    """PNG bytes of a PIL image or an array (H×W, H×W×C); for media that arrive decoded, with no file to keep."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        array = np.asarray(image)
        if array.dtype != np.uint8:
            array = np.clip(array, 0, 255).astype(np.uint8)
        image = Image.fromarray(array)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def encode_audio(samples: Any, sample_rate: int) -> bytes:
    """FLAC bytes of decoded samples (shape (n,), (n, channels) or (channels, n) with channels ≤ 8)."""
    import soundfile as sf

    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 2 and array.shape[0] <= 8 < array.shape[1]:
        array = array.T  # (channels, n) as torch-style decoders give it
    buf = io.BytesIO()
    sf.write(buf, array, int(sample_rate), format="FLAC", subtype="PCM_16")
    return buf.getvalue()
