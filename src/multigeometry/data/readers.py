"""Reading raw media within limits: one function per kind of file, shared by the validate stage, the shard stage and
the registered model's raw inputs, so that a file validation passes is a file the shard stage can read.

Each raises `MediaError` with a quarantine reason (`image_too_large`, `image_undecodable`, `code_too_large`,
`code_undecodable`) and a detail naming the file. Audio is decoded by `data.audio.load_audio`.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class MediaError(ValueError):
    """A media file that cannot be used: `reason` is the quarantine reason, `detail` says what is wrong."""

    def __init__(self, source: object, reason: str, detail: str) -> None:
        super().__init__(f"{source}: {reason}: {detail}")
        self.reason = reason
        self.detail = detail


@contextlib.contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Pillow refuses images above twice its MAX_IMAGE_PIXELS as it opens them (and warns above it); set that limit to
    ours while decoding, so that a bomb is refused from its header before any pixel is decoded."""
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def read_image(source: Path | bytes, max_pixels: int, name: object = None) -> Any:
    """The decoded (loaded) PIL image of a file or of encoded bytes; refuses more than `max_pixels` pixels from the
    header, before decoding."""
    from PIL import Image, UnidentifiedImageError

    name = name if name is not None else source if isinstance(source, Path) else "image"
    with _pixel_limit(max_pixels):
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except Image.DecompressionBombError as e:
            raise MediaError(name, "image_too_large", f"{e}") from e
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            raise MediaError(name, "image_undecodable", f"{type(e).__name__}: {e}") from e
        width, height = image.size
        if width * height > max_pixels:
            image.close()
            raise MediaError(name, "image_too_large",
                             f"{width}x{height} = {width * height} pixels > validate.image_max_pixels={max_pixels}")
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            image.close()
            raise MediaError(name, "image_undecodable", f"{type(e).__name__}: {e}") from e
    return image


def utf8_problem(data: bytes, error: UnicodeDecodeError) -> tuple[int, str]:
    """(line, what is wrong) for a UTF-8 decoding error of `data`."""
    line = data[: error.start].count(b"\n") + 1
    column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
    return line, (f"not UTF-8 text: byte 0x{data[error.start]:02x} at column {column} ({error.reason}); save the file "
                  "as UTF-8")


def decode_utf8(data: bytes, name: object, reason: str) -> str:
    """`data` as UTF-8 text; otherwise a `MediaError` naming the line and the byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, problem = utf8_problem(data, e)
        raise MediaError(name, reason, f"line {line}: {problem}") from e


def read_code(path: Path, max_bytes: int) -> str:
    """A source file's text: at most `max_bytes` bytes of UTF-8."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise MediaError(path, "code_too_large", f"{size} bytes > validate.code_max_bytes={max_bytes}")
        data = path.read_bytes()
    except OSError as e:
        raise MediaError(path, "code_undecodable", f"{type(e).__name__}: {e}") from e
    return decode_utf8(data, path, "code_undecodable")
