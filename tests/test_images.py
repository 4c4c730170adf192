from __future__ import annotations

import io

import pytest
from PIL import Image

from multigeometry.data.decode import decode_members
from multigeometry.data.images import to_rgb


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_become_white_and_opaque_ones_keep_their_colour(mode):
    image = Image.new("RGBA", (4, 2), (0, 0, 0, 0))  # transparent black, as many icons store it
    image.putpixel((0, 0), (200, 30, 30, 255))
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "P":
        image = image.convert("P")
        image.info["transparency"] = image.getpixel((1, 0))
    image = Image.open(io.BytesIO(_png(image)))
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((1, 1)) == (255, 255, 255)
    assert rgb.getpixel((0, 0)) != (255, 255, 255)
    decoded = decode_members({"__key__": "k", "image.png": _png(image), "meta.json": b"{}"}, "test")
    assert decoded["image"].getpixel((1, 1)) == (255, 255, 255)


def test_half_transparent_pixels_blend_with_white_and_rgb_is_untouched():
    image = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    (r, g, b) = to_rgb(image).getpixel((0, 0))
    assert 120 <= r == g == b <= 135
    plain = Image.new("RGB", (1, 1), (1, 2, 3))
    assert to_rgb(plain).getpixel((0, 0)) == (1, 2, 3)
