"""Rendering a scene to an image, and the placement that the image and the scene's drawing program share."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from multigeometry.data.world.scene import COLORS, Scene, SceneObject

_RADIUS = {"small": 0.1, "large": 0.18}  # fraction of the image side
_ANCHOR = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73), "centre": (0.5, 0.5)}
_PAIR = {"left of": ((0.27, 0.5), (0.73, 0.5)), "above": ((0.5, 0.27), (0.5, 0.73))}
_PAIR["right of"] = (_PAIR["left of"][1], _PAIR["left of"][0])
_PAIR["below"] = (_PAIR["above"][1], _PAIR["above"][0])


@dataclass(frozen=True)
class Placement:
    obj: SceneObject
    x: int
    y: int
    radius: int
    angle: float  # degrees


def place(scene: Scene, size: int, rng: np.random.Generator) -> list[Placement]:
    """Pixel centres, radii and rotations with jitter; no two images are alike."""
    if scene.position is not None:
        anchors = [_ANCHOR[scene.position]]
    else:
        anchors = list(_PAIR[scene.relation or "left of"])
    placements = []
    for obj, (ax, ay) in zip(scene.objects, anchors, strict=True):
        radius = _RADIUS[obj.size] * size * float(rng.uniform(0.85, 1.15))
        jitter = 0.06 * size
        placements.append(
            Placement(
                obj=obj,
                x=round(ax * size + float(rng.uniform(-jitter, jitter))),
                y=round(ay * size + float(rng.uniform(-jitter, jitter))),
                radius=max(3, round(radius)),
                angle=round(float(rng.uniform(-20, 20)), 1),
            )
        )
    return placements


def polygon(shape: str, x: float, y: float, r: float, angle: float) -> list[tuple[float, float]] | None:
    """The outline of a polygonal shape; None for shapes drawn otherwise (circle)."""

    def ring(n: int, radius: float, offset: float) -> list[tuple[float, float]]:
        return [
            (
                x + radius * math.cos(math.radians(offset + angle + 360 * i / n)),
                y + radius * math.sin(math.radians(offset + angle + 360 * i / n)),
            )
            for i in range(n)
        ]

    if shape == "circle":
        return None
    if shape == "square":
        return ring(4, r * 1.2, 45)
    if shape == "diamond":
        return ring(4, r * 1.2, 0)
    if shape == "triangle":
        return ring(3, r * 1.25, -90)
    if shape == "pentagon":
        return ring(5, r * 1.1, -90)
    if shape == "hexagon":
        return ring(6, r * 1.1, 0)
    if shape == "star":
        outer, inner = ring(5, r * 1.3, -90), ring(5, r * 0.55, -54)
        return [p for pair in zip(outer, inner, strict=True) for p in pair]
    if shape == "cross":
        w = r * 0.4
        pts = [
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
        ]
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        return [(x + px * c - py * s, y + px * s + py * c) for px, py in pts]
    raise ValueError(f"unknown shape {shape!r}")


def _texture(image: Image.Image, p: Placement, rgb: tuple[int, ...], outline: list | None) -> None:
    """Stripes, dots or checks in a darker shade of the object's colour, inside its outline."""
    if p.obj.texture in ("", "plain"):
        return
    mask = Image.new("L", image.size, 0)
    shape = ImageDraw.Draw(mask)
    box = (p.x - p.radius, p.y - p.radius, p.x + p.radius, p.y + p.radius)
    shape.ellipse(box, fill=255) if outline is None else shape.polygon(outline, fill=255)
    pattern = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(pattern)
    step = max(3, p.radius // 3)
    x0, y0, x1, y1 = (round(v) for v in box)
    for y in range(y0 - step, y1 + step, step):
        for x in range(x0 - step, x1 + step, step):
            i, j = (x - x0) // step, (y - y0) // step
            if p.obj.texture == "striped" and j % 2 == 0:
                draw.rectangle((x, y, x + step, y + step // 2), fill=255)
            elif p.obj.texture == "dotted":
                r = max(1, step // 4)
                draw.ellipse((x + step // 2 - r, y + step // 2 - r, x + step // 2 + r, y + step // 2 + r), fill=255)
            elif p.obj.texture == "checked" and (i + j) % 2 == 0:
                draw.rectangle((x, y, x + step - 1, y + step - 1), fill=255)
    light = sum(rgb) / 3 < 90  # a pattern on a dark object is drawn lighter, else darker
    dark = tuple(int(c + (255 - c) * 0.55) if light else int(c * 0.45) for c in rgb)
    image.paste(Image.new("RGB", image.size, dark), (0, 0), Image.fromarray(np.minimum(np.asarray(mask),
                                                                                        np.asarray(pattern))))


def _clutter(draw: ImageDraw.ImageDraw, size: int, count: int, rng: np.random.Generator) -> None:
    """`count` thin strokes and small blots in muted colours: background that no caption describes."""
    for _ in range(count):
        shade = tuple(int(v) for v in rng.integers(90, 200, size=3))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, size=4))
        if rng.random() < 0.6:
            draw.line((x0, y0, x1, y1), fill=shade, width=max(1, size // 96))
        else:
            r = float(rng.uniform(0.01, 0.03)) * size
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=shade)


def _background(size: int, rng: np.random.Generator) -> Image.Image:
    """A light background with a colour ramp across or down it."""
    base = np.array([rng.uniform(185, 250) for _ in range(3)])
    tilt = rng.uniform(-30, 30, size=3)
    ramp = (
        np.linspace(-0.5, 0.5, size)[None, :, None]
        if rng.random() < 0.5
        else np.linspace(-0.5, 0.5, size)[:, None, None]
    )
    background = np.broadcast_to(base + ramp * tilt, (size, size, 3))
    return Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))


def _colour(p: Placement, rng: np.random.Generator) -> tuple[int, ...]:
    """The object's colour, jittered."""
    return tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in COLORS[p.obj.color])


def _draw_object(image: Image.Image, draw: ImageDraw.ImageDraw, p: Placement, rgb: tuple[int, ...]) -> None:
    outline = polygon(p.obj.shape, p.x, p.y, p.radius, p.angle)
    if outline is None:
        draw.ellipse((p.x - p.radius, p.y - p.radius, p.x + p.radius, p.y + p.radius), fill=rgb)
    else:
        draw.polygon(outline, fill=rgb)
    _texture(image, p, rgb, outline)


def render(scene: Scene, placements: list[Placement], size: int, noise: float, rng: np.random.Generator,
           clutter: int = 0) -> Image.Image:
    image = _background(size, rng)
    draw = ImageDraw.Draw(image)
    if clutter:
        _clutter(draw, size, clutter, rng)
    for p in placements:
        _draw_object(image, draw, p, _colour(p, rng))
    pixels = np.asarray(image).astype(np.float32)
    if noise > 0:
        pixels += rng.normal(0.0, noise, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------------------------------
# clips
# ---------------------------------------------------------------------------------------------------------------------

TRAVEL = 0.25  # moving left/right/up/down: the distance covered, as a share of the clip's side, centred on the place
GROWTH = 0.7  # growing/shrinking: the radius runs from (1 - GROWTH/2) to (1 + GROWTH/2) of its own, or back
SPIN = 45.0  # spinning: degrees turned over the clip (below every polygon's symmetry angle, so the turn shows)


def moved(p: Placement, motion: str | None, u: float, side: int) -> Placement:
    """`p` at time `u` in [0, 1] of a clip: the motion is symmetric about the still placement (u = 0.5), so a clip of
    one motion holds the frames of its opposite, in the reverse order — only their order tells them apart."""
    d = 0.5 - u
    x, y, r, angle = float(p.x), float(p.y), float(p.radius), p.angle
    if motion == "left":
        x += d * TRAVEL * side
    elif motion == "right":
        x -= d * TRAVEL * side
    elif motion == "up":
        y += d * TRAVEL * side
    elif motion == "down":
        y -= d * TRAVEL * side
    elif motion == "grows":
        r *= 1.0 - d * GROWTH
    elif motion == "shrinks":
        r *= 1.0 + d * GROWTH
    elif motion == "spins":
        angle -= d * SPIN
    return Placement(p.obj, round(x), round(y), max(2, round(r)), round(angle, 2))


def render_clip(scene: Scene, placements: list[Placement], image_size: int, side: int, frames: int, noise: float,
                rng: np.random.Generator) -> np.ndarray:
    """The scene's clip, (frames, side, side, 3) uint8: the image's placements scaled to `side`, moving as
    `scene.motion` says, over a still background with still noise (a clip's frames differ only where things move)."""
    scale = side / image_size
    still = [Placement(p.obj, round(p.x * scale), round(p.y * scale), max(2, round(p.radius * scale)), p.angle)
             for p in placements]
    background = _background(side, rng)
    colours = [_colour(p, rng) for p in still]
    grain = rng.normal(0.0, noise, size=(side, side, 3)) if noise > 0 else None
    out = []
    for t in range(frames):
        u = t / (frames - 1) if frames > 1 else 0.5
        image = background.copy()
        draw = ImageDraw.Draw(image)
        for p, rgb in zip(still, colours, strict=True):
            _draw_object(image, draw, moved(p, scene.motion, u, side), rgb)
        pixels = np.asarray(image)
        if grain is not None:
            pixels = np.clip(pixels.astype(np.float32) + grain, 0, 255).astype(np.uint8)
        out.append(pixels)
    return np.stack(out)
