"""Images to RGB the same way everywhere (shard features, training, evaluation, serving)."""

from __future__ import annotations

from typing import Any

# Transparent pixels are composited onto white: icons, stamps and clip art are drawn for a white page, and PIL's
# plain convert("RGB") keeps the colour under a transparent pixel (often black), which shows the encoders a
# silhouette on black instead of the drawing.
BACKGROUND = (255, 255, 255)


def has_alpha(image: Any) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)


def to_rgb(image: Any) -> Any:
    """`image` as RGB, transparent areas composited onto `BACKGROUND`."""
    from PIL import Image

    if not has_alpha(image):
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")
